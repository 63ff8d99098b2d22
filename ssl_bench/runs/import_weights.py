"""``ssl-bench import-weights``: another framework's AlexNet-family weights -> a suite checkpoint.

    ssl-bench import-weights caffe --prototxt P --caffemodel M --out CKPT [--convention NAME] [--geometry G]
    ssl-bench import-weights caffe2-pkl --pkl F --out CKPT [--convention NAME] [trunk options]
    ssl-bench import-weights vissl --checkpoint F --out CKPT [--convention NAME] [trunk options]
    ssl-bench import-weights state-dict --weights F [--mapping M.yaml] [--trunk-config C.yaml] --out CKPT

The result is an ordinary suite checkpoint (``pretext = "imported"``) that ``ssl-bench probe
checkpoint=``, ``finetune checkpoint=``, ``prepare-weights`` and ``export`` take; the network keeps
its own input convention (`ssl_bench.weights.convention`). Bad input is one line naming the file and
the layer or key, exit status 2, and nothing is written at ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssl_bench.errors import ConfigError
from ssl_bench.runs.jobs import run_argparse_command
from ssl_bench.weights.convention import CONVENTIONS, convention_named

PROG = "ssl-bench import-weights"
FORMATS = ("caffe", "caffe2-pkl", "vissl", "state-dict")
# trunk options -> AlexNet constructor argument
TRUNK_OPTIONS = {"geometry": "geometry", "fc_channels": "fc_channels", "fc6_kernel": "fc6_kernel",
                 "fc6_dilation": "fc6_dilation", "lrn": "lrn", "dropout": "dropout"}


def _common(p: argparse.ArgumentParser, trunk: bool = True) -> None:
    p.add_argument("--out", required=True, type=Path, help="the suite checkpoint to write")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default=None,
                   help="the input the network was trained on (default: what the file says or implies)")
    p.add_argument("--geometry", choices=("train", "deploy"), default=None,
                   help="deploy: CaffeNet layout (unpadded conv1 and pools, 227 -> 55/27/13); train: the "
                        "colorization training net's padded layout")
    if not trunk:
        return
    g = p.add_argument_group("trunk", "what the weights cannot show")
    g.add_argument("--fc-channels", type=int, default=None, help="width of fresh fc6/fc7 (a file without them)")
    g.add_argument("--fc6-kernel", type=int, default=None, help="kernel of a fresh fc6 (default 6)")
    g.add_argument("--fc6-dilation", type=int, default=None, help="fc6 dilation in the train geometry")
    g.add_argument("--lrn", action=argparse.BooleanOptionalAction, default=None,
                   help="Caffe's local response normalisation after pool1/pool2")
    g.add_argument("--dropout", type=float, default=None, help="dropout after fc6/fc7 in train mode")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Import another framework's AlexNet-family weights as a "
                                "suite checkpoint (probe, finetune, prepare-weights and export take it).")
    sub = p.add_subparsers(dest="fmt", required=True, metavar="{" + ",".join(FORMATS) + "}")
    caffe = sub.add_parser("caffe", help="a Caffe .prototxt and .caffemodel")
    caffe.add_argument("--prototxt", required=True, type=Path)
    caffe.add_argument("--caffemodel", required=True, type=Path)
    _common(caffe, trunk=False)
    c2 = sub.add_parser("caffe2-pkl", help="a Caffe2 model-zoo pickle (Goyal et al.'s benchmark)")
    c2.add_argument("--pkl", required=True, type=Path)
    _common(c2)
    vissl = sub.add_parser("vissl", help="a VISSL / ClassyVision .torch checkpoint")
    vissl.add_argument("--checkpoint", required=True, type=Path)
    _common(vissl)
    sd = sub.add_parser("state-dict", help="a PyTorch state dict with a key mapping")
    sd.add_argument("--weights", required=True, type=Path, help="torch.save'd state dict")
    sd.add_argument("--mapping", type=Path, default=None,
                    help="YAML: their key -> suite key (conv1.0.weight ...); default: the keys are the suite's")
    sd.add_argument("--trunk-config", type=Path, default=None,
                    help="YAML/JSON of AlexNet arguments, or an exported model_card.json")
    _common(sd)
    return p


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    return {arg: getattr(a, opt) for opt, arg in TRUNK_OPTIONS.items() if getattr(a, opt, None) is not None}


def _inputs(a: argparse.Namespace) -> list[Path]:
    return [getattr(a, k) for k in ("prototxt", "caffemodel", "pkl", "checkpoint", "weights", "mapping",
                                    "trunk_config") if getattr(a, k, None) is not None]


def read(a: argparse.Namespace) -> Any:
    """The `ImportedWeights` the arguments describe."""
    convention = convention_named(a.convention) if a.convention else None
    if a.fmt == "caffe":
        from ssl_bench.weights.caffe import read_caffe
        weights = read_caffe(a.prototxt, a.caffemodel, convention)
        extra = _overrides(a)
        return dataclasses.replace(weights, trunk={**weights.trunk, **extra}) if extra else weights
    if a.fmt == "caffe2-pkl":
        from ssl_bench.weights.caffe2_pkl import read_caffe2_pkl
        return read_caffe2_pkl(a.pkl, convention, _overrides(a))
    if a.fmt == "vissl":
        from ssl_bench.weights.vissl import read_vissl
        return read_vissl(a.checkpoint, convention, _overrides(a))
    from ssl_bench.weights.state_dict import read_mapped_state_dict
    config = a.trunk_config
    if _overrides(a):
        from ssl_bench.weights.state_dict import read_trunk_config
        base, card = read_trunk_config(a.trunk_config) if a.trunk_config else ({}, None)
        config, convention = {**base, **_overrides(a)}, convention or card
    return read_mapped_state_dict(a.weights, a.mapping, config, convention)


def summary(weights: Any, out: Path) -> str:
    """One line: what was imported, how it is fed, where it went."""
    conv = weights.convention
    name = next((k for k, v in CONVENTIONS.items() if v.same_as(conv)), str(conv.to_dict()))
    fresh = f"; {'/'.join(weights.initialised)} not in the file: freshly initialised" if weights.initialised else ""
    t = weights.trunk
    return (f"ssl-bench: imported {weights.fmt} AlexNet (widths {t['widths']}, fc {t['fc_channels']}, "
            f"{t['geometry']} geometry, input {name}, suite input {conv.suite_space}{fresh}) -> {out}")


def main(argv: Sequence[str]) -> int:
    """Returns the exit code: 0 ok, 2 user error (one line on stderr; nothing written at --out)."""
    def body(a: argparse.Namespace) -> str:
        if any(p.resolve() == a.out.resolve() for p in _inputs(a)):
            raise ConfigError(f"--out {a.out} is one of the input files; choose another path")
        from ssl_bench.weights.imported import write_imported
        weights = read(a)
        write_imported(weights, a.out)
        return summary(weights, a.out)
    return run_argparse_command(build_parser(), argv, body)
