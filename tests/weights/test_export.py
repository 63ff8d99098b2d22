"""``ssl-bench export`` -> ``import-weights state-dict`` of the exported files gives the same trunk, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_TRUNK
from test_caffe2_pkl import CONVS

import ssl_bench
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.runs.export import main as export
from ssl_bench.runs.import_weights import main as import_weights
from ssl_bench.weights.convention import CONVENTIONS
from ssl_bench.weights.imported import ImportedWeights, write_imported

LAYERS = CONVS + ("fc6", "fc7")


def trained_checkpoint(run) -> tuple:
    """A checkpoint as pretraining writes it (run/checkpoints/last.ckpt, results.json in the run folder)."""
    torch.manual_seed(0)
    trunk = AlexNet(**TINY_TRUNK).eval()
    with torch.no_grad():
        for name in LAYERS:
            getattr(trunk, name)[1].running_mean.normal_()
            getattr(trunk, name)[1].running_var.uniform_(0.5, 2.0)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["head.weight"] = torch.zeros(313, 64, 1, 1)
    torch.save({"state_dict": state, "global_step": 12, "epoch": 1,
                "ssl_bench": {"trunk": dict(trunk.config), "pretext": "colorization", "variant": "full",
                              "input_space": "L", "num_outputs": 313}}, ckpt)
    (run / "results.json").write_text(json.dumps({"kind": "pretrain", "metrics": {"loss": 1.5}}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\noptimizer:\n  lr: 0.001\n")
    return ckpt, trunk


def _roundtrip(tmp_path, ckpt):
    out_dir, again = tmp_path / "export", tmp_path / "again.ckpt"
    assert export([str(ckpt), "--format", "state-dict", "--out", str(out_dir)]) == 0
    state = torch.load(out_dir / "state_dict.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    card = json.loads((out_dir / "model_card.json").read_text())
    assert import_weights(["state-dict", "--weights", str(out_dir / "state_dict.pt"), "--trunk-config",
                           str(out_dir / "model_card.json"), "--out", str(again)]) == 0
    return state, card, again


def _same_features(a, b, x) -> None:
    with torch.no_grad():
        fa, fb = a.forward_features(x, LAYERS), b.forward_features(x, LAYERS)
    for layer in LAYERS:
        assert torch.equal(fa[layer], fb[layer]), layer


def test_trained_checkpoint_round_trip_is_bit_identical(tmp_path):
    ckpt, trunk = trained_checkpoint(tmp_path / "run")
    state, card, again = _roundtrip(tmp_path, ckpt)
    own = trunk.state_dict()
    assert set(state) == set(own) and all(torch.equal(state[k], v) for k, v in own.items())
    assert card["architecture"] == "ssl_bench.models.alexnet.AlexNet" and card["trunk"] == trunk.config
    assert card["geometry"] == "train" and card["input_space"] == "L" and card["method"] == "colorization/full"
    assert card["input_convention"] == {"channels": "L", "scale": 1.0, "mean": [50.0], "std": []}
    assert card["results"]["metrics"]["loss"] == 1.5 and card["training"]["config"]["optimizer"]["lr"] == 0.001
    assert card["training"]["global_step"] == 12 and card["pretext_settings"]["num_outputs"] == 313
    assert read_suite_checkpoint(again).meta["trunk"] == trunk.config
    x = torch.randn(2, 1, 67, 67, generator=torch.Generator().manual_seed(0)) * 30
    _same_features(ssl_bench.load_trunk(ckpt), ssl_bench.load_trunk(again), x)


def test_imported_checkpoint_round_trip_keeps_its_convention(tmp_path):
    torch.manual_seed(1)
    net = AlexNet(in_channels=3, input_space="rgb", geometry="deploy", batch_norm=False, lrn=True, **TINY_TRUNK)
    first = write_imported(ImportedWeights(dict(net.config), net.state_dict(), CONVENTIONS["bgr255-caffe-mean"],
                                           "net.caffemodel", "caffe"), tmp_path / "first.ckpt")
    _, card, again = _roundtrip(tmp_path, first)
    assert card["method"] == "imported/caffe" and card["input_convention"]["mean"] == [104.0, 117.0, 123.0]
    conventions = [read_suite_checkpoint(p).meta["input_convention"] for p in (first, again)]
    assert conventions[0] == conventions[1]
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(2)) * 2 - 1  # suite rgb input
    _same_features(read_suite_checkpoint(first).load_trunk(), read_suite_checkpoint(again).load_trunk(), x)


@pytest.mark.parametrize("case", ["missing", "not_suite", "out_is_file"])
def test_export_errors_are_one_line(tmp_path, capsys, case):
    ckpt = tmp_path / "x.ckpt"
    out = tmp_path / "out"
    if case == "not_suite":
        torch.save({"weights": torch.zeros(1)}, ckpt)
    if case == "out_is_file":
        ckpt, _ = trained_checkpoint(tmp_path / "run")
        out.write_text("")
    assert export([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ssl-bench: error:"), err
    assert not (out / "state_dict.pt").exists()
