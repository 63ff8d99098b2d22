"""Caffe2 model-zoo pickles: a pickle written here with Goyal et al.'s blob names -> import -> the same
features as a forward pass written with torch.nn.functional on the blobs themselves."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssl_bench
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.runs.import_weights import main as import_weights

WIDTHS = (8, 16, 24, 24, 16)
KERNELS = (11, 5, 3, 3, 3)
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
SIZE = 99  # conv1 23, conv2 11, conv3..5 5: Caffe2's floor pooling and Caffe's ceil agree here
EPS = 1.0000001e-5  # the benchmark's BN_EPSILON


def reference_alexnet(x: torch.Tensor, p: dict[str, dict[str, torch.Tensor]], eps: float = 1e-5,
                      lrn: bool = False) -> dict[str, torch.Tensor]:
    """CaffeNet-layout AlexNet from its definition: conv (conv1 stride 4, others padded to keep the
    size, groups from the weight shapes) -> batch norm in eval mode if given (scale ``s``, shift
    ``sh``, running ``rm``/``rv``) -> ReLU; 3x3/2 max pooling after conv1, conv2, conv5 (LRN after
    pool1/pool2 if asked); fc6/fc7 (when in ``p``, weights ``w`` as (out, in)) fully connected."""
    out = {}
    for name, k in zip(CONVS, KERNELS):
        q = p[name]
        x = F.conv2d(x, q["w"], q["b"], stride=4 if name == "conv1" else 1, padding=0 if name == "conv1" else k // 2,
                     groups=x.shape[1] // q["w"].shape[1])
        if "rm" in q:
            x = F.batch_norm(x, q["rm"], q["rv"], q.get("s"), q.get("sh"), training=False, eps=eps)
        x = out[name] = F.relu(x)
        if name in ("conv1", "conv2", "conv5"):
            x = F.max_pool2d(x, 3, 2)
            if lrn and name != "conv5":
                x = F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
    for name in ("fc6", "fc7"):
        if name in p:
            x = F.relu(F.linear(x.flatten(1), p[name]["w"], p[name]["b"]))
            out[name] = x[:, :, None, None]
    return out


def assert_features_close(got: torch.Tensor, expected: torch.Tensor, layer: str, tol: float = 1e-5) -> None:
    """Equal within ``tol`` of the layer's scale (float32 rounding grows with the activations)."""
    assert got.shape == expected.shape, (layer, got.shape, expected.shape)
    err = (got - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), (layer, err)


def random_params(in_channels: int, bn: bool, affine: bool = True, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """conv1..conv5 of WIDTHS with grouped conv2/4/5, scaled so activations stay near 1."""
    g = torch.Generator().manual_seed(seed)
    p, cin = {}, in_channels
    for name, w, k in zip(CONVS, WIDTHS, KERNELS):
        groups = 2 if name in ("conv2", "conv4", "conv5") else 1
        fan = cin // groups * k * k
        q = {"w": torch.randn(w, cin // groups, k, k, generator=g) / fan ** 0.5, "b": 0.1 * torch.randn(w, generator=g)}
        if bn:
            q["rm"], q["rv"] = 0.1 * torch.randn(w, generator=g), 0.5 + torch.rand(w, generator=g)
            if affine:
                q["s"], q["sh"] = 1 + 0.2 * torch.randn(w, generator=g), 0.1 * torch.randn(w, generator=g)
        p[name], cin = q, w
    return p


def caffe2_blobs(p: dict[str, dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Their blob names (alexnet_colorize_finetune_linear.py), with solver state and probe heads beside."""
    parts = {"s": "s", "sh": "b", "rm": "rm", "rv": "riv"}
    blobs: dict[str, np.ndarray] = {"model_iter": np.array(450000), "lr": np.array(0.01, dtype=np.float32),
                                    "fc_c1_w": np.zeros((4, 9600), np.float32), "pred_c1_b": np.zeros(4, np.float32)}
    for name, q in p.items():
        blobs[f"{name}_w"], blobs[f"{name}_b"] = q["w"].numpy(), q["b"].numpy()
        blobs[f"{name}_w_momentum"] = np.zeros_like(blobs[f"{name}_w"])
        for ours, theirs in parts.items():
            blobs[f"{name}norm_{theirs}"] = q[ours].numpy()
    return blobs


def write_pkl(path, blobs) -> None:
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))


@pytest.fixture
def lab_input() -> torch.Tensor:
    """L - 50 of a random image: the benchmark colorization net's input."""
    return torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 100 - 50


def test_import_matches_reference_at_every_conv_layer(tmp_path, lab_input, capsys):
    p = random_params(1, bn=True)
    write_pkl(tmp_path / "alexnet_colorization_in1k_pretext.pkl", caffe2_blobs(p))
    out = tmp_path / "imported.ckpt"
    assert import_weights(["caffe2-pkl", "--pkl", str(tmp_path / "alexnet_colorization_in1k_pretext.pkl"),
                           "--out", str(out), "--fc-channels", "32"]) == 0
    assert "fc6/fc7 not in the file" in capsys.readouterr().out
    expected = reference_alexnet(lab_input, p, eps=EPS)
    native = ssl_bench.load_trunk(out)
    suite = read_suite_checkpoint(out).load_trunk()  # L - 50 is the suite's own L input: no wrapper
    with torch.no_grad():
        for trunk in (native, suite):
            got = trunk.forward_features(lab_input, CONVS)
            for layer in CONVS:
                assert_features_close(got[layer], expected[layer], layer)
    meta = read_suite_checkpoint(out).meta
    assert meta["pretext"] == "imported" and meta["variant"] == "caffe2-pkl" and meta["input_space"] == "L"
    assert meta["initialised"] == ["fc6", "fc7"] and meta["trunk"]["geometry"] == "deploy"
    assert meta["input_convention"] == {"channels": "L", "scale": 1.0, "mean": [50.0], "std": []}


def _fails(tmp_path, capsys, args: list[str], *needles: str) -> None:
    out = tmp_path / "out.ckpt"
    assert import_weights([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ssl-bench: error:"), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.ckpt*"))


def test_bad_pickles_name_the_file_and_blob(tmp_path, capsys):
    p = random_params(1, bn=True)
    good = tmp_path / "good.pkl"
    write_pkl(good, caffe2_blobs(p))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(good.read_bytes()[:2000])
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(truncated)], str(truncated), "not a readable Caffe2 pickle")
    blobs = caffe2_blobs(p)
    blobs["conv2_w"] = np.zeros((16, 4, 3, 3), np.float32)
    write_pkl(tmp_path / "shape.pkl", blobs)
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "shape.pkl")], "shape.pkl", "conv2_w", "5x5")
    blobs = caffe2_blobs(p)
    del blobs["conv4norm_riv"]
    write_pkl(tmp_path / "bn.pkl", blobs)
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "bn.pkl")], "bn.pkl", "conv4norm_riv")
    write_pkl(tmp_path / "jigsaw.pkl", {f"conv1_s0_{k}": v for k, v in caffe2_blobs(p).items()})
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "jigsaw.pkl")], "jigsaw.pkl", "Jigsaw")
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "missing.pkl")], "missing.pkl", "does not exist")
    rgb = random_params(3, bn=True)
    write_pkl(tmp_path / "rgb.pkl", caffe2_blobs(rgb))
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "rgb.pkl")], "rgb.pkl", "--convention")
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "rgb.pkl"), "--convention", "L50"],
           "conv1 reads 3 channel(s)")


class _Shell:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"blobs": {"conv1_w": _Shell()}}, protocol=2))
    _fails(tmp_path, capsys, ["caffe2-pkl", "--pkl", str(tmp_path / "evil.pkl")], "evil.pkl", "refusing to load")
    assert not (tmp_path / "pwned.txt").exists()
