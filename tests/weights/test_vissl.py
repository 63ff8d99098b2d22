"""VISSL checkpoints: a nested ClassyVision-style file written here with VISSL's AlexNet key names ->
import -> the features of a torch.nn.functional forward on the same tensors."""

from __future__ import annotations

import pytest
import torch
from test_caffe2_pkl import CONVS, SIZE, assert_features_close, random_params, reference_alexnet

import ssl_bench
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.runs.import_weights import main as import_weights

BLOCK = {"conv1": 0, "conv2": 2, "conv3": 4, "conv4": 5, "conv5": 6}  # vissl alexnet_colorization._feature_blocks


def vissl_trunk(p: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The trunk's state dict as VISSL names it: Sequential(conv, BatchNorm2d, ReLU) per conv block."""
    parts = {"w": "0.weight", "b": "0.bias", "s": "1.weight", "sh": "1.bias", "rm": "1.running_mean",
             "rv": "1.running_var"}
    state = {}
    for name, q in p.items():
        for ours, theirs in parts.items():
            state[f"_feature_blocks.{BLOCK[name]}.{theirs}"] = q[ours].clone()
        state[f"_feature_blocks.{BLOCK[name]}.1.num_batches_tracked"] = torch.tensor(1000)
    return state


def nested(trunk: dict[str, torch.Tensor]) -> dict:
    return {"type": "consolidated", "phase_idx": 27, "iteration": 123,
            "classy_state_dict": {"train_phase_idx": 27, "base_model": {"model": {
                "trunk": trunk, "heads": {"0.clf.0.weight": torch.zeros(3, 9)}}}}}


@pytest.fixture
def lab_input() -> torch.Tensor:
    return torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 100 - 50


@pytest.mark.parametrize("layout", ["training", "converted"])
def test_import_matches_reference_at_every_conv_layer(tmp_path, lab_input, layout):
    p = random_params(1, bn=True, seed=3)
    trunk = vissl_trunk(p)
    ckpt = nested(trunk) if layout == "training" else {"model_state_dict": trunk}
    torch.save(ckpt, tmp_path / "model_final_checkpoint_phase27.torch")
    out = tmp_path / "vissl.ckpt"
    assert import_weights(["vissl", "--checkpoint", str(tmp_path / "model_final_checkpoint_phase27.torch"),
                           "--out", str(out), "--fc-channels", "32"]) == 0
    expected = reference_alexnet(lab_input, p)  # nn.BatchNorm2d's default eps
    with torch.no_grad():
        got = ssl_bench.load_trunk(out).forward_features(lab_input, CONVS)
    for layer in CONVS:
        assert_features_close(got[layer], expected[layer], layer)
    meta = read_suite_checkpoint(out).meta
    assert meta["variant"] == "vissl" and meta["input_space"] == "L" and meta["initialised"] == ["fc6", "fc7"]


def test_bad_vissl_files_name_the_file_and_key(tmp_path, capsys):
    p = random_params(1, bn=True, seed=3)

    def fails(ckpt, *needles: str) -> None:
        src, out = tmp_path / "in.torch", tmp_path / "out.ckpt"
        if isinstance(ckpt, bytes):
            src.write_bytes(ckpt)
        else:
            torch.save(ckpt, src)
        assert import_weights(["vissl", "--checkpoint", str(src), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in.torch" in err, err
        for needle in needles:
            assert needle in err, err
        assert not out.exists()

    trunk = vissl_trunk(p)
    torch.save(nested(trunk), tmp_path / "whole.torch")
    fails((tmp_path / "whole.torch").read_bytes()[:1500], "not a readable torch file")
    fails(nested({**trunk, "_feature_blocks.3.0.weight": torch.zeros(2, 2, 1, 1)}), "_feature_blocks.3.0.weight",
          "unsupported layer")
    shaped = dict(trunk)
    shaped["_feature_blocks.4.0.bias"] = torch.zeros(7)
    fails(nested(shaped), "_feature_blocks.4.0.bias", "(24,)")
    no_bn = {k: v for k, v in trunk.items() if ".1." not in k}  # alexnet_bvlc: LRN before pooling
    fails(nested(no_bn), "without batch norm")
    fails({"classy_state_dict": {"base_model": {"model": {"heads": {}}}}}, "no trunk weights")
    fails(nested({k: v for k, v in trunk.items() if not k.startswith("_feature_blocks.5.")}),
          "conv4", "_feature_blocks.5.0.weight")
