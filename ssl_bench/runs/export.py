"""``ssl-bench export``: a suite checkpoint -> a plain PyTorch state dict and a model card.

    ssl-bench export CKPT --format state-dict --out DIR

Writes ``DIR/state_dict.pt`` (the trunk's tensors; ``torch.load(..., weights_only=True)``) and
``DIR/model_card.json`` (architecture, constructor arguments, geometry, input convention, training
config and results when found); see `ssl_bench.weights.export`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ssl_bench.runs.jobs import run_argparse_command

PROG = "ssl-bench export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Export a suite checkpoint's trunk as a plain PyTorch "
                                "state dict with a model card.")
    p.add_argument("checkpoint", type=Path, help="a suite checkpoint (pretrained or imported)")
    p.add_argument("--format", dest="fmt", choices=("state-dict",), default="state-dict")
    p.add_argument("--out", required=True, type=Path, help="folder for state_dict.pt and model_card.json")
    return p


def main(argv: Sequence[str]) -> int:
    """Returns the exit code: 0 ok, 2 user error (one line on stderr)."""
    def body(a: argparse.Namespace) -> str:
        from ssl_bench.weights.export import export_checkpoint
        weights, card = export_checkpoint(a.checkpoint, a.out, a.fmt)
        return f"ssl-bench: exported {a.checkpoint} -> {weights} and {card}"
    return run_argparse_command(build_parser(), argv, body)
