"""A user's own AlexNet (torchvision-style key names, LRN, fully connected fc6/fc7, no batch norm) with a
mapping file -> import -> the features of a torch.nn.functional forward on the same tensors."""

from __future__ import annotations

import pytest
import torch
from test_caffe2_pkl import CONVS, SIZE, WIDTHS, assert_features_close, random_params, reference_alexnet

import ssl_bench
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.runs.import_weights import main as import_weights

FC = 32
POOL5 = 2  # the pool5 side at SIZE: fc6 reads 16 x 2 x 2
THEIRS = {"conv1": "features.0", "conv2": "features.4", "conv3": "features.8", "conv4": "features.10",
          "conv5": "features.12", "fc6": "classifier.1", "fc7": "classifier.4"}


def user_model(seed: int = 4) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(parameters by layer, the user's state dict with an fc8 head the mapping leaves out)."""
    g = torch.Generator().manual_seed(seed)
    p = random_params(3, bn=False, seed=seed)
    fan6 = WIDTHS[-1] * POOL5 * POOL5
    p["fc6"] = {"w": torch.randn(FC, fan6, generator=g) / fan6 ** 0.5, "b": 0.1 * torch.randn(FC, generator=g)}
    p["fc7"] = {"w": torch.randn(FC, FC, generator=g) / FC ** 0.5, "b": 0.1 * torch.randn(FC, generator=g)}
    state = {f"{THEIRS[n]}.{'weight' if k == 'w' else 'bias'}": v.clone() for n, q in p.items() for k, v in q.items()}
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.zeros(10, FC), torch.zeros(10)
    return p, state


def write_inputs(tmp_path, state, mapping: dict[str, str] | None = None) -> list[str]:
    torch.save(state, tmp_path / "mine.pt")
    mapping = mapping or {f"{THEIRS[n]}.{k}": f"{n}.0.{k}" for n in THEIRS for k in ("weight", "bias")}
    (tmp_path / "map.yaml").write_text("".join(f"{k}: {v}\n" for k, v in mapping.items()))
    (tmp_path / "trunk.yaml").write_text("geometry: deploy\nlrn: true\n")
    return ["state-dict", "--weights", str(tmp_path / "mine.pt"), "--mapping", str(tmp_path / "map.yaml"),
            "--trunk-config", str(tmp_path / "trunk.yaml")]


def test_mapped_state_dict_matches_reference_at_every_layer(tmp_path):
    p, state = user_model()
    out = tmp_path / "mine.ckpt"
    assert import_weights([*write_inputs(tmp_path, state), "--convention", "rgb01", "--out", str(out)]) == 0
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))  # rgb01: the net's own input
    expected = reference_alexnet(x, p, lrn=True)
    trunk = ssl_bench.load_trunk(out)
    with torch.no_grad():
        got = trunk.forward_features(x, CONVS + ("fc6", "fc7"))
    for layer in CONVS + ("fc6", "fc7"):
        assert_features_close(got[layer], expected[layer], layer)
    meta = read_suite_checkpoint(out).meta
    assert meta["trunk"]["lrn"] and meta["trunk"]["fc6_kernel"] == POOL5 and meta["initialised"] == []
    assert meta["input_convention"]["channels"] == "rgb" and meta["input_space"] == "rgb"


@pytest.mark.parametrize("case", ["missing_key", "shape", "bad_target", "truncated", "config"])
def test_bad_inputs_name_the_file_and_key(tmp_path, capsys, case):
    p, state = user_model()
    mapping = {f"{THEIRS[n]}.{k}": f"{n}.0.{k}" for n in THEIRS for k in ("weight", "bias")}
    needles: tuple[str, ...]
    if case == "missing_key":
        mapping["features.99.weight"] = mapping.pop("features.8.weight")
        needles = ("mine.pt", "features.99.weight", "map.yaml")
    elif case == "shape":
        state["features.8.weight"] = torch.zeros(24, 16, 5, 5)
        needles = ("mine.pt", "features.8.weight", "3x3")
    elif case == "bad_target":
        mapping["features.8.weight"] = "conv3.weight"
        needles = ("features.8.weight", "conv3.weight", "suite key")
    args = write_inputs(tmp_path, state, mapping)
    if case == "truncated":
        data = (tmp_path / "mine.pt").read_bytes()
        (tmp_path / "mine.pt").write_bytes(data[: len(data) // 2])
        needles = ("--weights", "mine.pt", "not a readable torch file")
    elif case == "config":
        (tmp_path / "trunk.yaml").write_text("geometry: deploy\nwidths: [8, 16, 24, 24, 99]\n")
        needles = ("widths", "contradicts", "mine.pt")
    out = tmp_path / "out.ckpt"
    assert import_weights([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ssl-bench: error:"), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
