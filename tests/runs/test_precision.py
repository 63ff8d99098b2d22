"""precision=fastest: bf16 autocast where the CPU (AVX512-BF16, AMX-BF16) or the GPU computes bf16 natively,
fp32 where bf16 would be emulated; resolved in one place (ssl_bench/runs/common.py) and recorded in every
results.json envelope."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssl_bench.config import compose
from ssl_bench.runs.common import RunClock, cpu_flags, finish_record, native_bf16, resolve_precision, run_precision

# the flags line of a Zen 4 EPYC's /proc/cpuinfo (abridged), and of a Skylake-SP Xeon (AVX-512, no BF16)
ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme de pse tsc msr avx2 avx512f avx512dq avx512_bf16 avx512_vnni clzero
"""
SKYLAKE_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""


def cpu_capabilities(monkeypatch, **flags: bool) -> None:
    """The CPU as torch.cpu.get_capabilities reports it (no GPU)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_f": True, **flags})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512_bf16": True, "amx_bf16": False}, "bf16-mixed"),
    ({"avx512_bf16": False, "amx_bf16": True}, "bf16-mixed"),
    ({"avx512_bf16": False, "amx_bf16": False}, "32-true"),
    ({}, "32-true"),
])
def test_fastest_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, flags, expected):
    cpu_capabilities(monkeypatch, **flags)
    assert resolve_precision("fastest", "cpu") == expected


def test_named_precisions_are_used_as_given(monkeypatch):
    cpu_capabilities(monkeypatch, avx512_bf16=False)
    for name in ("32-true", "bf16-mixed", "16-mixed", "64-true"):
        assert resolve_precision(name, "cpu") == name


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_fastest_on_a_gpu_asks_for_native_bf16(monkeypatch, bf16, expected):
    """A V100 has no bf16 units (torch emulates it): fastest stays fp32 there, whatever the CPU has."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        asked.append(including_emulation) or bf16)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": not bf16})
    assert resolve_precision("fastest", "cuda") == expected
    assert asked == [False]


@pytest.mark.parametrize(("text", "native"), [(ZEN4_CPUINFO, True), (SKYLAKE_CPUINFO, False)])
def test_without_torch_detection_the_kernel_flags_decide(monkeypatch, tmp_path, text, native):
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    flags = cpu_flags(info)
    assert {"avx2", "avx512f"} <= flags and ("avx512_bf16" in flags) is native
    assert not cpu_flags(tmp_path / "absent")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_torch_detection_agrees_with_the_kernel_on_this_machine():
    text = Path("/proc/cpuinfo").read_text()
    kernel = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    assert native_bf16("cpu") == bool(kernel & {"avx512_bf16", "amx_bf16"})


def test_every_results_record_says_which_precision_ran(monkeypatch):
    """The envelope records the resolved precision (the config keeps the request); a run without a
    precision key (colorization quality, no autocast) ran in fp32."""
    cpu_capabilities(monkeypatch, avx512_bf16=True)
    for config in ("pretrain", "probe_run"):
        assert run_precision(compose(config, ["precision=fastest", "trainer.accelerator=cpu"])) == "bf16-mixed"
    run = OmegaConf.create({"seed": 0, "precision": "fastest", "trainer": {"accelerator": "cpu"}})
    record = finish_record({"kind": "pretrain"}, RunClock(), run, None, write=False)
    assert record["precision"] == "bf16-mixed" and record["config"]["precision"] == "fastest"
    cpu_capabilities(monkeypatch, avx512_bf16=False)
    assert run_precision(compose("pretrain", ["precision=fastest"])) == "32-true"
    assert run_precision(compose("pretrain", [])) == "32-true"  # the default stays the authors' fp32
    assert "precision" not in compose("colorization_eval", ["checkpoint=x.ckpt"])
    assert finish_record({}, RunClock(), OmegaConf.create({"seed": 0}), None, write=False)["precision"] == "32-true"
