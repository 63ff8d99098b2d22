"""Input conventions: the suite's input converted to what an imported network was trained on, checked
against conversions written here from the uint8 pixels (and scikit-image's Lab)."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_TRUNK, synthetic_batch
from skimage.color import rgb2lab
from test_caffe2_pkl import CONVS, assert_features_close

import ssl_bench
from ssl_bench.errors import ConfigError
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import load_prepared, read_suite_checkpoint, save_prepared
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.prepare import absorb_batch_norm
from ssl_bench.probe.heads import FeatureExtractor, resize_layer
from ssl_bench.weights.convention import CONVENTIONS, ConventionTrunk, InputConvention
from ssl_bench.weights.imported import ImportedWeights, write_imported

CAFFE_MEAN_BGR = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_batch(3, size=48, seed=7)[0]


def _lab(images: torch.Tensor) -> torch.Tensor:
    lab = rgb2lab(images.permute(0, 2, 3, 1).numpy())
    return torch.from_numpy(lab).permute(0, 3, 1, 2).float()


def test_named_conventions_match_conversions_from_the_pixels(images):
    rgb, gray = trunk_input(images, "rgb"), trunk_input(images, "L")
    caffe = images[:, [2, 1, 0]].float() - CAFFE_MEAN_BGR
    torch.testing.assert_close(CONVENTIONS["bgr255-caffe-mean"].to_native(rgb), caffe, atol=2e-4, rtol=0)
    torch.testing.assert_close(CONVENTIONS["rgb01"].to_native(rgb), images.float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(CONVENTIONS["rgb-imagenet-std"].to_native(rgb), rgb)
    lab = _lab(images)
    torch.testing.assert_close(CONVENTIONS["L"].to_native(gray), lab[:, :1], atol=1e-3, rtol=0)
    torch.testing.assert_close(CONVENTIONS["L50"].to_native(gray), lab[:, :1] - 50, atol=1e-3, rtol=0)
    torch.testing.assert_close(CONVENTIONS["lab"].to_native(rgb), lab, atol=2e-3, rtol=0)
    std = InputConvention("bgr", 255.0, (104.0, 117.0, 123.0), (58.0, 57.0, 57.5))
    torch.testing.assert_close(std.to_native(rgb), caffe / torch.tensor([58.0, 57.0, 57.5]).view(1, 3, 1, 1),
                               atol=1e-5, rtol=0)
    # the colour fine-tuning input (L - 50, a, b) of a lightness net: L converted, ab passed through
    suite_lab = trunk_input(images, "lab")
    raw = CONVENTIONS["L"].to_native(suite_lab, "lab")
    torch.testing.assert_close(raw, torch.cat([suite_lab[:, :1] + 50, suite_lab[:, 1:]], 1))


def test_suite_conventions_are_identities_and_bad_ones_are_refused(images):
    assert CONVENTIONS["L50"].is_suite() and CONVENTIONS["rgb-imagenet-std"].is_suite()
    assert not CONVENTIONS["bgr255-caffe-mean"].is_suite() and not CONVENTIONS["L"].is_suite()
    with pytest.raises(ConfigError, match="lightness only"):
        CONVENTIONS["bgr255-caffe-mean"].to_native(trunk_input(images, "L"), "L")
    with pytest.raises(ConfigError, match="mean needs 3"):
        InputConvention("bgr", 255.0, (104.0,))
    with pytest.raises(ConfigError, match="channels"):
        InputConvention("hsv")


def _bgr_net(seed: int = 0) -> AlexNet:
    """The 'original' network: an RGB-family AlexNet trained on Caffe's BGR 0..255 minus the mean."""
    torch.manual_seed(seed)
    net = AlexNet(in_channels=3, input_space="rgb", geometry="deploy", **TINY_TRUNK).eval()
    with torch.no_grad():
        for name in CONVS + ("fc6", "fc7"):
            bn = getattr(net, name)[1]
            bn.running_mean.normal_(0, 20)
            bn.running_var.uniform_(100.0, 4000.0)  # unit-scale activations from 0..255 input
    return net


def test_probe_forward_of_an_imported_bgr_net_sees_what_the_original_saw(tmp_path, images):
    net = _bgr_net()
    out = write_imported(ImportedWeights(dict(net.config), net.state_dict(), CONVENTIONS["bgr255-caffe-mean"],
                                         "caffenet.caffemodel", "caffe"), tmp_path / "bgr.ckpt")
    opened = read_suite_checkpoint(out)
    assert opened.info()["input_space"] == "rgb"
    trunk = opened.load_trunk()
    assert isinstance(trunk, ConventionTrunk)
    pooling = {"bilinear": {layer: 3 for layer in CONVS}}
    probe = FeatureExtractor(trunk, CONVS, "bilinear", opened.info()["input_space"], channels_last=False,
                             pooling=pooling)
    manual = images[:, [2, 1, 0]].float() - CAFFE_MEAN_BGR
    with torch.no_grad():
        got = probe(images)
        maps = net.forward_features(manual, CONVS)
        native = ssl_bench.load_trunk(out).forward_features(manual, CONVS)
    for layer in CONVS:
        assert_features_close(got[layer], resize_layer(maps[layer], layer, "bilinear", 3), layer, tol=1e-4)
        assert torch.equal(native[layer], maps[layer]), layer  # load_trunk: the net's own input, same weights


def test_prepared_weights_keep_the_convention(tmp_path, images):
    net = _bgr_net(1)
    wrapped = ConventionTrunk(absorb_batch_norm(net), CONVENTIONS["bgr255-caffe-mean"])
    save_prepared(wrapped, tmp_path / "prepared.pt", {"source": "x"})
    loaded, info = load_prepared(tmp_path / "prepared.pt")
    assert isinstance(loaded, ConventionTrunk) and info["mode"] == "rgb" and loaded.input_space == "rgb"
    x = trunk_input(images, "rgb")
    manual = images[:, [2, 1, 0]].float() - CAFFE_MEAN_BGR
    with torch.no_grad():
        got, expected = loaded.forward_features(x, CONVS), net.forward_features(manual, CONVS)
    for layer in CONVS:
        assert_features_close(got[layer], expected[layer], layer, tol=1e-4)
