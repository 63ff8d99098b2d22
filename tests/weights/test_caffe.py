"""Caffe import: nets written by a test-only encoder (caffe_writer), checked against a reference forward
pass written here in plain torch.nn.functional calls, with Caffe's semantics (grouped convolution, ceil-mode
max pooling, cross-channel LRN and BatchNorm's stored moving-average factor applied by hand)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffe_writer import write_caffemodel

from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import CheckpointMismatchError
from ssl_bench.models.layers import LAYERS
from ssl_bench.weights.caffe import read_caffe
from ssl_bench.weights.caffe_proto import parse_prototxt
from ssl_bench.weights.imported import InputConvention

WIDTHS, FC = (16, 32, 48, 48, 32), 64
V1_NAMES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING", "LRN": "LRN",
            "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT", "Data": "DATA", "SoftmaxWithLoss": "SOFTMAX_LOSS"}


def lrn_reference(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> torch.Tensor:
    """Caffe's ACROSS_CHANNELS LRN: x / (1 + alpha/size * sum of x^2 over the channel window)^beta."""
    out, half, sq = torch.empty_like(x), (size - 1) // 2, x * x
    for c in range(x.shape[1]):
        window = sq[:, max(0, c - half):min(x.shape[1], c + half + 1)].sum(1)
        out[:, c] = x[:, c] / (1.0 + alpha / size * window) ** beta
    return out


class Net:
    """Builds a prototxt, the blobs of its caffemodel and the reference forward pass side by side."""

    def __init__(self, seed: int, legacy: bool = False) -> None:
        self.rng, self.legacy = np.random.default_rng(seed), legacy
        self.text: list[str] = []
        self.weights: list[tuple[str, str, list[np.ndarray]]] = []
        self.steps: list = []
        self.features: dict[str, torch.Tensor] = {}

    def layer(self, name: str, kind: str, bottoms=(), tops=(), body: str = "") -> None:
        head = "layers" if self.legacy else "layer"
        kind_text = V1_NAMES[kind] if self.legacy else f'"{kind}"'
        links = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
        self.text.append(f'{head} {{\n  name: "{name}" type: {kind_text}{links}\n  {body}\n}}')

    def randn(self, *shape: int, std: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def conv(self, name, bottom, top, cin, out, k, s=1, p=0, g=1, d=1, weight=None, bias=True, wstd=None):
        w = weight if weight is not None else self.randn(out, cin // g, k, k,
                                                         std=wstd or math.sqrt(2.0 / (cin // g * k * k)))
        blobs = [w] + ([self.randn(out, std=0.1)] if bias else [])
        param = (f"num_output: {out} kernel_size: {k}" + (f" stride: {s}" if s != 1 else "")
                 + (f" pad: {p}" if p else "") + (f" group: {g}" if g != 1 else "")
                 + (f" dilation: {d}" if d != 1 else "") + ("" if bias else " bias_term: false"))
        self.layer(name, "Convolution", [bottom], [top],
                   f"param {{ lr_mult: 1 }} convolution_param {{ {param} weight_filler {{ type: 'gaussian' }} }}")
        self.weights.append((name, "Convolution", blobs))
        wt, bt = torch.from_numpy(w).double(), torch.from_numpy(blobs[1]).double() if bias else None
        self.steps.append(lambda env: env.__setitem__(top, F.conv2d(env[bottom], wt, bt, s, p, d, g)))
        return blobs

    def ip(self, name, bottom, top, cin, out):
        w, b = self.randn(out, cin, std=math.sqrt(2.0 / cin)), self.randn(out, std=0.1)
        self.layer(name, "InnerProduct", [bottom], [top], f"inner_product_param {{ num_output: {out} }}")
        self.weights.append((name, "InnerProduct", [w, b]))
        wt, bt = torch.from_numpy(w).double(), torch.from_numpy(b).double()
        self.steps.append(lambda env: env.__setitem__(top, F.linear(env[bottom].flatten(1), wt, bt)))

    def relu(self, name, blob, feature=None):
        self.layer(name, "ReLU", [blob], [blob])

        def step(env):
            env[blob] = F.relu(env[blob])
            if feature:
                self.features[feature] = env[blob]
        self.steps.append(step)

    def pool(self, name, bottom, top, k=3, s=2, p=0, method="MAX"):
        self.layer(name, "Pooling", [bottom], [top],
                   f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s}" + (f" pad: {p} }}" if p else " }"))
        self.steps.append(lambda env: env.__setitem__(top, F.max_pool2d(env[bottom], k, s, p, ceil_mode=True)))

    def lrn(self, name, bottom, top):
        self.layer(name, "LRN", [bottom], [top], "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
        self.steps.append(lambda env: env.__setitem__(top, lrn_reference(env[bottom])))

    def dropout(self, name, blob, ratio=0.5):
        self.layer(name, "Dropout", [blob], [blob], f"dropout_param {{ dropout_ratio: {ratio} }}")

    def batch_norm(self, name, bottom, top, c, factor=0.75, eps=1e-5):
        mean, var = self.randn(c, std=0.5), (self.rng.uniform(0.5, 2.0, c)).astype(np.float32)
        blobs = [mean * factor, var * factor, np.array([factor], np.float32)]
        self.layer(name, "BatchNorm", [bottom], [top],
                   "batch_norm_param { }" if eps == 1e-5 else f"batch_norm_param {{ eps: {eps} }}")
        self.weights.append((name, "BatchNorm", blobs))
        stored = [torch.from_numpy(b).double() for b in blobs]

        def step(env):  # Caffe: mean = blob0 / blob2, var = blob1 / blob2 (a zero factor reads as zero)
            f = stored[2][0].item()
            sf = 0.0 if f == 0 else 1.0 / f
            m, v = (stored[0] * sf).view(1, -1, 1, 1), (stored[1] * sf).view(1, -1, 1, 1)
            env[top] = (env[bottom] - m) / torch.sqrt(v + eps)
        self.steps.append(step)

    def scale(self, name, bottom, top, c):
        gamma, beta = self.rng.uniform(0.5, 1.5, c).astype(np.float32), self.randn(c, std=0.2)
        self.layer(name, "Scale", [bottom], [top], "scale_param { bias_term: true }")
        self.weights.append((name, "Scale", [gamma, beta]))
        g, b = torch.from_numpy(gamma).double().view(1, -1, 1, 1), torch.from_numpy(beta).double().view(1, -1, 1, 1)
        self.steps.append(lambda env: env.__setitem__(top, env[bottom] * g + b))

    def forward(self, env: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.features = {}
        for step in self.steps:
            step(env)
        return self.features

    def write(self, tmp: Path, stem: str, header: str = "", **model_kw) -> tuple[Path, Path]:
        proto = tmp / f"{stem}.prototxt"
        proto.write_text(f'name: "{stem}"\n{header}\n' + "\n".join(self.text) + "\n")
        return proto, write_caffemodel(tmp / f"{stem}.caffemodel", self.weights, **model_kw)


def caffenet(seed: int = 0, legacy: bool = False, lrn_first: bool = False, pool5: str = "MAX",
             conv3_kernel: int = 3, extra_layer: bool = False) -> Net:
    """CaffeNet geometry: conv1 11/4 unpadded, ceil-mode pools, LRN after pool1/pool2, InnerProduct fc6/fc7."""
    n = Net(seed, legacy)
    w1, w2, w3, w4, w5 = WIDTHS
    n.conv("conv1", "data", "conv1", 3, w1, 11, s=4, wstd=0.01)
    n.relu("relu1", "conv1", "conv1")
    if lrn_first:
        n.lrn("norm1", "conv1", "norm1")
        n.pool("pool1", "norm1", "pool1")
    else:
        n.pool("pool1", "conv1", "pool1")
        n.lrn("norm1", "pool1", "norm1")
    n.conv("conv2", "pool1" if lrn_first else "norm1", "conv2", w1, w2, 5, p=2, g=2)
    n.relu("relu2", "conv2", "conv2")
    n.pool("pool2", "conv2", "pool2")
    n.lrn("norm2", "pool2", "norm2")
    n.conv("conv3", "norm2", "conv3", w2, w3, conv3_kernel, p=conv3_kernel // 2)
    n.relu("relu3", "conv3", "conv3")
    if extra_layer:
        n.layer("up3", "Deconvolution", ["conv3"], ["conv3"], "convolution_param { num_output: 48 kernel_size: 1 }")
    n.conv("conv4", "conv3", "conv4", w3, w4, 3, p=1, g=2)
    n.relu("relu4", "conv4", "conv4")
    n.conv("conv5", "conv4", "conv5", w4, w5, 3, p=1, g=2)
    n.relu("relu5", "conv5", "conv5")
    n.pool("pool5", "conv5", "pool5", method=pool5)
    n.ip("fc6", "pool5", "fc6", w5 * 36, FC)
    n.relu("relu6", "fc6", "fc6")
    n.dropout("drop6", "fc6")
    n.ip("fc7", "fc6", "fc7", FC, FC)
    n.relu("relu7", "fc7", "fc7")
    n.dropout("drop7", "fc7")
    n.ip("fc8", "fc7", "fc8", FC, 10)
    n.layer("loss", "SoftmaxWithLoss", ["fc8", "label"], ["loss"])
    return n


DATA_LAYERS = """
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 } data_param { batch_size: 10 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 mean_value: 1 } data_param { batch_size: 256 } }
"""
LEGACY_INPUT = 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227'
CAFFE_BGR = InputConvention("bgr", 255.0, (104.0, 117.0, 123.0))


def model_features(imported, x: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    model = AlexNet(**imported.trunk)
    model.load_state_dict(imported.state_dict)
    model = model.double().eval()
    with torch.no_grad():
        return model.forward_features(x, LAYERS, **kw)


def assert_features_match(ours: dict, ref: dict) -> None:
    for name in LAYERS:
        r = ref[name].reshape(ours[name].shape)
        err = (ours[name] - r).abs().max().item()
        assert err <= 1e-5 * max(1.0, r.abs().max().item()), f"{name}: max abs error {err}"


def bgr_batch(seed: int = 1) -> torch.Tensor:
    """Caffe's input: BGR 0..255 minus the mean pixel, N x 3 x 227 x 227."""
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(2, 3, 227, 227, generator=g, dtype=torch.float64)
    return x01 * 255.0 - torch.tensor([104.0, 117.0, 123.0], dtype=torch.float64).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------ equivalence


def test_caffenet_current_layout_matches_reference(tmp_path):
    net = caffenet()
    proto, model = net.write(tmp_path, "caffenet", DATA_LAYERS)
    imported = read_caffe(proto, model)
    assert imported.trunk == {"in_channels": 3, "widths": list(WIDTHS), "fc_channels": FC, "fc6_kernel": 6,
                              "fc6_dilation": 1, "groups": True, "batch_norm": False, "input_space": "rgb",
                              "geometry": "deploy", "lrn": True, "dropout": 0.5}
    # the TEST-phase data layer's transform_param, not the TRAIN one's (mean_value: 1)
    assert imported.convention == CAFFE_BGR
    assert imported.fmt == "caffe" and "ab_branch" not in imported.extra
    x = bgr_batch()
    assert_features_match(model_features(imported, x), net.forward({"data": x}))


def test_caffenet_legacy_v1_layout_matches_reference(tmp_path):
    net = caffenet(seed=3, legacy=True)
    # V1 `layers` list, legacy num/channels/height/width blob dims, unpacked floats
    proto, model = net.write(tmp_path, "caffenet_v1", LEGACY_INPUT, v1=True, legacy_dims=True, packed=False)
    with pytest.raises(CheckpointMismatchError, match=r"caffenet_v1\.prototxt: conv1's input comes from a net "
                                                      r"input with no per-channel mean/scale; pass the input "
                                                      r"convention explicitly"):
        read_caffe(proto, model)
    imported = read_caffe(proto, model, convention=CAFFE_BGR)
    assert imported.convention == CAFFE_BGR and imported.trunk["geometry"] == "deploy" and imported.trunk["lrn"]
    x = bgr_batch(2)
    assert_features_match(model_features(imported, x), net.forward({"data": x}))


COLOR_HEADER = """
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN } transform_param { crop_size: 176 } }
layer { name: "data" type: "Data" top: "data" include { phase: TEST } transform_param { crop_size: 227 } }
layer { name: "img_lab" type: "ColorConv" bottom: "data" top: "img_lab" color_conv_param { input: 0 output: 3 } }
layer { name: "img_slice" type: "Slice" bottom: "img_lab" top: "img_l" top: "data_ab"
  slice_param { axis: 1 slice_point: 1 } }
"""


def colorization_net(seed: int = 5, data_l=(0.03125, -1.5625)) -> Net:
    """The authors' training geometry: padded conv1 and pools, BatchNorm after every layer (a Scale after
    conv3, a zero moving-average factor at fc7), pool5 stride 1, fc6 a 6x6 convolution with dilation 2,
    and the fixed 1x1 data_l convolution on raw L."""
    n = Net(seed)
    n.conv("data_l", "img_l", "data_l", 1, 1, 1, weight=np.full((1, 1, 1, 1), data_l[0], np.float32))
    n.weights[-1][2][1][:] = data_l[1]
    n.steps[-1] = lambda env: env.__setitem__("data_l", env["img_l"] * data_l[0] + data_l[1])
    w1, w2, w3, w4, w5 = WIDTHS
    spec = [("conv1", w1, 11, 4, 5, 1, 1), ("conv2", w2, 5, 1, 2, 2, 1), ("conv3", w3, 3, 1, 1, 1, 1),
            ("conv4", w4, 3, 1, 1, 2, 1), ("conv5", w5, 3, 1, 1, 2, 1), ("fc6", FC, 6, 1, 5, 1, 2),
            ("fc7", FC, 1, 1, 0, 1, 1)]
    bottom, cin = "data_l", 1
    for name, out, k, s, p, g, d in spec:
        n.conv(name, bottom, name, cin, out, k, s, p, g, d, wstd=0.05 if name == "conv1" else None)
        top = f"{name}norm"
        n.batch_norm(top, name, top, out, factor=0.0 if name == "fc7" else 0.75)
        if name == "conv3":
            n.scale("conv3scale", top, top, out)
        n.relu(f"relu_{name}", top, name)
        bottom, cin = top, out
        if name in ("conv1", "conv2", "conv5"):
            n.pool(f"pool{name[-1]}", top, f"pool{name[-1]}", s=1 if name == "conv5" else 2, p=1)
            bottom = f"pool{name[-1]}"
    n.conv("fc8", "fc7norm", "fc8", FC, 313, 1)
    n.layer("loss8", "SoftmaxCrossEntropyLoss", ["fc8", "gt_ab_313"], ["loss"])
    return n


def test_colorization_train_net_with_batch_norm_matches_reference(tmp_path):
    net = colorization_net()
    proto, model = net.write(tmp_path, "colorization", COLOR_HEADER)
    imported = read_caffe(proto, model)
    assert imported.trunk["geometry"] == "train" and imported.trunk["fc6_kernel"] == 6
    assert imported.trunk["fc6_dilation"] == 2 and imported.trunk["batch_norm"] is False
    assert imported.trunk["in_channels"] == 1 and imported.trunk["input_space"] == "L"
    assert not imported.trunk["lrn"] and imported.trunk["dropout"] == 0.0
    # data_l = L / 32 - 1.5625 = (L - 50) / 32: the 1x1 input layer becomes the input convention
    assert imported.convention == InputConvention("L", 1.0, (50.0,), (32.0,))
    assert imported.extra["caffe_layers"]["conv3"]["scale"] == "conv3scale"
    g = torch.Generator().manual_seed(4)
    lightness = torch.rand(2, 1, 227, 227, generator=g, dtype=torch.float64) * 100.0
    ours = model_features(imported, (lightness - 50.0) / 32.0)
    assert_features_match(ours, net.forward({"img_l": lightness}))


AB_HEADER = """
layer { name: "img_lab" type: "Input" top: "img_lab" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }
layer { name: "img_slice" type: "Slice" bottom: "img_lab" top: "img_l" top: "img_ab"
  slice_param { axis: 1 slice_point: 1 } }
"""


def test_colour_model_keeps_its_ab_branch(tmp_path):
    """Deploy geometry, the authors' data_l (L - 50) and an ab branch summed into conv1 (their fine-tuning net)."""
    n = Net(7)
    n.conv("data_l", "img_l", "data_l", 1, 1, 1, weight=np.ones((1, 1, 1, 1), np.float32))
    n.weights[-1][2][1][:] = -50.0
    n.steps[-1] = lambda env: env.__setitem__("data_l", env["img_l"] - 50.0)
    ab_scale = n.conv("data_ab", "img_ab", "data_ab", 2, 2, 1, g=2, bias=False,
                      weight=np.full((2, 1, 1, 1), 0.693, np.float32))
    w1, w2, w3, w4, w5 = WIDTHS
    n.conv("conv1", "data_l", "conv1", 1, w1, 11, s=4, wstd=0.05)
    ab = n.conv("conv1_ab", "data_ab", "conv1_ab", 2, w1, 11, s=4, wstd=0.05)
    n.layer("conv1_lab", "Eltwise", ["conv1", "conv1_ab"], ["conv1_lab"])
    n.steps.append(lambda env: env.__setitem__("conv1_lab", env["conv1"] + env["conv1_ab"]))
    n.relu("relu1", "conv1_lab", "conv1")
    n.pool("pool1", "conv1_lab", "pool1")
    n.conv("conv2", "pool1", "conv2", w1, w2, 5, p=2, g=2)
    n.relu("relu2", "conv2", "conv2")
    n.pool("pool2", "conv2", "pool2")
    for name, cin, out, g in (("conv3", w2, w3, 1), ("conv4", w3, w4, 2), ("conv5", w4, w5, 2)):
        n.conv(name, {"conv3": "pool2"}.get(name, f"conv{int(name[-1]) - 1}"), name, cin, out, 3, p=1, g=g)
        n.relu(f"relu{name[-1]}", name, name)
    n.pool("pool5", "conv5", "pool5")
    n.conv("fc6", "pool5", "fc6", w5, FC, 6)
    n.relu("relu6", "fc6", "fc6")
    n.conv("fc7", "fc6", "fc7", FC, FC, 1)
    n.relu("relu7", "fc7", "fc7")
    proto, model = n.write(tmp_path, "colour", AB_HEADER)
    imported = read_caffe(proto, model)
    assert imported.convention == InputConvention("L", 1.0, (50.0,))
    assert imported.trunk["geometry"] == "deploy" and imported.trunk["in_channels"] == 1
    branch = imported.extra["ab_branch"]
    assert branch["eltwise"] == "conv1_lab" and list(branch["layers"]) == ["data_ab", "conv1_ab"]
    assert torch.equal(branch["layers"]["data_ab"][0], torch.from_numpy(ab_scale[0]))
    assert torch.equal(branch["layers"]["conv1_ab"][1], torch.from_numpy(ab[1]))
    g = torch.Generator().manual_seed(8)
    lab = torch.cat([torch.rand(2, 1, 227, 227, generator=g) * 100,
                     torch.rand(2, 2, 227, 227, generator=g) * 220 - 110], 1).double()
    w_ab, w1ab, b1ab = (t.double() for t in (branch["layers"]["data_ab"][0], *branch["layers"]["conv1_ab"]))
    residual = F.conv2d(F.conv2d(lab[:, 1:], w_ab, groups=2), w1ab, b1ab, stride=4)
    ours = model_features(imported, lab[:, :1] - 50.0, conv1_residual=residual)
    assert_features_match(ours, n.forward({"img_l": lab[:, :1], "img_ab": lab[:, 1:]}))


# ------------------------------------------------------------------------------------ bad input


def test_truncated_caffemodel_is_refused(tmp_path):
    proto, model = caffenet().write(tmp_path, "net", DATA_LAYERS)
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(CheckpointMismatchError, match=r"caffemodel .*net\.caffemodel: not a readable Caffe "
                                                      r"NetParameter \(truncated field 100"):
        read_caffe(proto, model)


def test_layer_missing_from_caffemodel_is_named(tmp_path):
    net = caffenet()
    net.weights = [w for w in net.weights if w[0] != "conv3"]
    proto, model = net.write(tmp_path, "net", DATA_LAYERS)
    with pytest.raises(CheckpointMismatchError, match=r"net\.caffemodel: no weights for layer 'conv3' \(the "
                                                      r"prototxt .*net\.prototxt has it\)"):
        read_caffe(proto, model)


def test_blob_shape_mismatch_is_named(tmp_path):
    net = caffenet()
    proto, model = net.write(tmp_path, "net", DATA_LAYERS)
    proto.write_text(proto.read_text().replace("num_output: 32 kernel_size: 5", "num_output: 40 kernel_size: 5"))
    with pytest.raises(CheckpointMismatchError, match=r"layer 'conv2' blob 0 has shape \[32, 8, 5, 5\]; the "
                                                      r"prototxt .* implies \[40, 8, 5, 5\]"):
        read_caffe(proto, model)


def test_layer_missing_from_prototxt_is_named(tmp_path):
    proto, model = caffenet().write(tmp_path, "net", DATA_LAYERS)
    proto.write_text(proto.read_text().replace('name: "conv4"', 'name: "conv4x"'))
    with pytest.raises(CheckpointMismatchError, match=r"net\.prototxt: no layer named 'conv4'"):
        read_caffe(proto, model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pool5="AVE"), r"layer 'pool5' is AVE pooling; the AlexNet trunk max-pools"),
    (dict(conv3_kernel=5), r"layer 'conv3' has kernel 5, stride 1, pad 2, dilation 1, group 1; the AlexNet trunk "
                           r"\(deploy geometry, set by conv1's padding\) has kernel 3, stride 1, pad 1"),
    (dict(extra_layer=True), r"layer 'up3' \(type Deconvolution\) between 'conv3' and 'conv4' has no counterpart"),
    (dict(lrn_first=True), r"LRN layer 'norm1' comes before the pooling after 'conv1'"),
])
def test_nets_outside_the_alexnet_family_are_refused(tmp_path, kwargs, message):
    proto, model = caffenet(**kwargs).write(tmp_path, "net", DATA_LAYERS)
    with pytest.raises(CheckpointMismatchError, match=message):
        read_caffe(proto, model)


def test_conv1_padding_outside_both_geometries_is_refused(tmp_path):
    proto, model = caffenet().write(tmp_path, "net", DATA_LAYERS)
    proto.write_text(proto.read_text().replace("kernel_size: 11 stride: 4", "kernel_size: 11 stride: 4 pad: 100"))
    with pytest.raises(CheckpointMismatchError, match=r"layer 'conv1' has pad 100; the AlexNet trunk has 0 "):
        read_caffe(proto, model)


def test_prototxt_syntax_error_names_file_and_line(tmp_path):
    proto, model = caffenet().write(tmp_path, "net", DATA_LAYERS)
    proto.write_text('name: "x"\nlayer {\n  name: "conv1" = 3\n}\n')
    with pytest.raises(CheckpointMismatchError, match=r"net\.prototxt:3: unexpected character '='"):
        read_caffe(proto, model)


def test_prototxt_text_format():
    text = """# comment
    name: 'n'  layer: { name: "a" input_param { shape { dim: [1, 3, 227, 227] } } }
    layer < name: "b" convolution_param { kernel_size: 3 pad: 1 dilation: 2 } >
    layer { name: "c\\"q" lrn_param { alpha: 1e-4 beta: .75 k: 1. norm_region: ACROSS_CHANNELS } }; input: "x"
    """
    net = parse_prototxt(text)
    assert net["name"] == ["n"] and net["input"] == ["x"]
    assert [layer["name"][0] for layer in net["layer"]] == ["a", "b", 'c"q']
    assert net["layer"][0]["input_param"][0]["shape"][0]["dim"] == [1, 3, 227, 227]
    assert net["layer"][1]["convolution_param"][0] == {"kernel_size": [3], "pad": [1], "dilation": [2]}
    assert net["layer"][2]["lrn_param"][0] == {"alpha": [1e-4], "beta": [0.75], "k": [1.0],
                                               "norm_region": ["ACROSS_CHANNELS"]}
