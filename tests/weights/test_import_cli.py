"""``ssl-bench import-weights`` from the top-level command: the imported checkpoint is taken by the
commands that take a checkpoint (probe, leaderboard of its results), refused clearly by colorize, and
bad requests are one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_TRUNK

from ssl_bench.models.alexnet import AlexNet
from ssl_bench.weights.convention import CONVENTIONS
from ssl_bench.weights.imported import ImportedWeights, write_imported


@pytest.fixture
def bgr_checkpoint(tmp_path):
    """A Caffe-convention (BGR 0..255 minus the mean) RGB trunk, imported through a plain state dict."""
    torch.manual_seed(0)
    net = AlexNet(in_channels=3, input_space="rgb", **TINY_TRUNK)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    return tmp_path / "net.pt"


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ssl-bench") and " error: " in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_imported_checkpoint_is_probed_and_tabulated(bgr_checkpoint, tiny_data, tmp_path, run_cli, capsys):
    ckpt = tmp_path / "imported.ckpt"
    assert run_cli("import-weights", "state-dict", "--weights", str(bgr_checkpoint), "--convention",
                   "bgr255-caffe-mean", "--out", str(ckpt)) == 0
    assert "input bgr255-caffe-mean, suite input rgb" in capsys.readouterr().out
    run = tmp_path / "probe"
    assert run_cli("probe", f"checkpoint={ckpt}", "probe=knn", f"data.root={tiny_data}", "data.synthetic=null",
                   "data.num_workers=0", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={run}",
                   "probe.batch_size=32", "trainer.enable_progress_bar=false") == 0
    res = json.loads((run / "results.json").read_text())
    assert res["method"] == "imported/state-dict" and res["trunk"]["input_space"] == "rgb"
    for layer in ("conv1", "conv5"):
        assert 0 <= res["metrics"][f"probe/{layer}/top1"] <= 100
    assert run_cli("leaderboard", str(run), "--out", str(tmp_path / "board"), "--no-published") == 0
    assert "imported/state-dict" in (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")


def test_colorize_refuses_an_imported_trunk_clearly(tmp_path, run_cli, capsys):
    net = AlexNet(**TINY_TRUNK)
    ckpt = write_imported(ImportedWeights(dict(net.config), net.state_dict(), CONVENTIONS["L50"], "x.pkl",
                                          "caffe2-pkl"), tmp_path / "trunk.ckpt")
    (tmp_path / "img.png").write_bytes(b"")
    assert run_cli("colorize", str(tmp_path / "img.png"), f"checkpoint={ckpt}") == 2
    _one_line_error(capsys, "trunk.ckpt", "colorization", "imported/caffe2-pkl")


def test_bad_requests_write_nothing(bgr_checkpoint, tmp_path, run_cli, capsys):
    assert run_cli("import-weights", "state-dict", "--weights", str(bgr_checkpoint), "--out", str(bgr_checkpoint)) == 2
    _one_line_error(capsys, "--out", "input files")
    assert run_cli("import-weights", "state-dict", "--weights", str(bgr_checkpoint), "--out", str(tmp_path)) == 2
    _one_line_error(capsys, "is a folder")
    out = tmp_path / "o.ckpt"
    assert run_cli("import-weights", "state-dict", "--weights", str(bgr_checkpoint), "--convention", "L50",
                   "--out", str(out)) == 2
    _one_line_error(capsys, "net.pt", "conv1 reads 3 channel(s)")
    assert run_cli("import-weights", "caffe2-pkl", "--pkl", str(tmp_path / "none.pkl"), "--out", str(out)) == 2
    _one_line_error(capsys, "none.pkl", "does not exist")
    assert run_cli("import-weights", "onnx", "--out", str(out)) == 2
    assert not out.exists()
