"""compile=true: a tiny real pretraining with the trunk under torch.compile (inductor, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides

pytestmark = pytest.mark.slow


def test_compiled_pretraining_records_warmup_and_keeps_checkpoint_keys(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    # no sample grids or checkpoints between the steps (tiny_overrides has them every 1-2 steps, which
    # would swamp the 5-step median of a network this small)
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "compile=true",
                   "callbacks.samples.every_n_steps=1000", "checkpoint.every_n_train_steps=1000") == 0
    res = json.loads((out / "results.json").read_text())
    c = res["compile"]
    assert c["enabled"] is True and res["metrics"]["pretrain/steps"] == 5
    # the first step compiles the forward and backward graphs (or, with a warm inductor cache, traces
    # them and loads the kernels): far slower than the steady state
    assert c["first_step_s"] > 3 * c["steady_step_s"] > 0
    state = torch.load(out / res["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert "trunk.conv1.0.weight" in state and not any("_orig_mod" in k for k in state)


def test_no_cxx_compiler_is_an_error_naming_the_key(tiny_data, tmp_path, run_cli, monkeypatch, capsys):
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    code = run_cli("pretrain", *tiny_overrides(tiny_data, tmp_path / "run", tmp_path / "cache"), "compile=true")
    err = capsys.readouterr().err
    assert code == 2 and "compile=true" in err and "set compile=false" in err and "C++ compiler" in err
