"""AlexNet trunk of the colorization cross-channel encoder (Zhang et al. 2016, released training net).

Layer layout (docs/protocols.md §1.6): conv1 96 11x11/4 pad 5, pool1 3x3/2 pad 1, conv2 256 5x5 g2, pool2,
conv3 384 3x3, conv4 384 3x3 g2, conv5 256 3x3 g2, pool5 3x3/1 pad 1, fc6 as a 6x6 convolution
with dilation 2 (pad 5), fc7 1x1. Batch norm without learned scale/shift follows every conv/fc, then
ReLU. The trunk is fully convolutional: fc6/fc7 run densely on the pool5 map, which is what makes the
faithful model cost about 52 GFLOP per 180x180 training image.

The same weights also build in the ``deploy`` geometry the authors evaluate in downstream (standard
CaffeNet): conv1 and the pools without padding, pools in Caffe's ceil mode, pool5 stride 2 and fc6 an
undilated, unpadded convolution, so at a 227 input the conv maps are 55/27/13 (train geometry: 57/29/15)
and fc6/fc7 are fully connected (1x1 maps). CaffeNet-family nets (Doersch, Pathak, Krähenbühl) also
carry local response normalisation after pool1 and pool2 (``lrn=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.models.layers import CONV_LAYERS, LAYERS

GEOMETRIES = ("train", "deploy")


def _pool(deploy: bool, stride: int) -> nn.MaxPool2d:
    """3x3 max pooling: padded in the train geometry, Caffe's unpadded ceil mode in deploy."""
    return nn.MaxPool2d(3, stride, 0, ceil_mode=True) if deploy else nn.MaxPool2d(3, stride, 1)


def _lrn() -> nn.LocalResponseNorm:
    """Caffe's LRN (across channels): x / (1 + alpha/size * sum x^2)^beta, as torch defines it too."""
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class ConvBNReLU(nn.Sequential):
    """Conv -> BatchNorm (no affine, as in the authors' net) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, batch_norm: bool = True) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=True),
            nn.BatchNorm2d(cout, affine=False) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class AlexNet(nn.Module):
    """AlexNet trunk with named per-layer outputs.

    Args:
        in_channels: 1 for an L input (colorization), 3 for RGB (other pretexts); None = from
            ``input_space``.
        widths: channels of conv1..conv5.
        fc_channels: channels of fc6/fc7 (4096 in the paper).
        fc6_kernel, fc6_dilation: fc6 as a convolution; (6, 2) is the authors' net. Padding keeps the
            pool5 resolution.
        groups: use the original two-group convolutions in conv2, conv4, conv5.
        input_space: recorded in checkpoints so that evaluators prepare inputs the same way
            ("L" = centred lightness L-50, "rgb" = sRGB in [0,1]).
        geometry: "train" (the authors' training net: padded conv1/pools, pool5 stride 1, dilated
            fc6) or "deploy" (CaffeNet: see the module docstring). The state dict is the same.
        lrn: Caffe's local response normalisation (size 5, alpha 1e-4, beta 0.75) after pool1/pool2.
        dropout: dropout probability after fc6 and fc7 (active in train mode only; 0 = none).
    """

    def __init__(self, in_channels: int | None = None, widths: Sequence[int] = (96, 256, 384, 384, 256),
                 fc_channels: int = 4096, fc6_kernel: int = 6, fc6_dilation: int = 2,
                 groups: bool = True, batch_norm: bool = True, input_space: str = "L",
                 geometry: str = "train", lrn: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ConfigError(f"backbone.widths: expected 5 channel counts (conv1..conv5), got {list(widths)}")
        if input_space not in ("L", "rgb"):
            raise ConfigError(f"backbone.input_space: expected 'L' or 'rgb', got {input_space!r}"
                              + (" (a Lab trunk is the split-brain AlexNet: backbone._target_=ssl_bench.models."
                                 "split_brain.SplitBrainAlexNet, as experiment=split_brain sets)"
                                 if input_space == "lab" else ""))
        if geometry not in GEOMETRIES:
            raise ConfigError(f"backbone.geometry: expected one of {GEOMETRIES}, got {geometry!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"backbone.dropout: expected a probability in [0, 1), got {dropout!r}")
        if in_channels is None:
            in_channels = 1 if input_space == "L" else 3
        g = 2 if groups else 1
        # Constructor arguments, saved in checkpoints so any tool can rebuild the trunk.
        self.config = dict(in_channels=in_channels, widths=list(widths), fc_channels=fc_channels,
                           fc6_kernel=fc6_kernel, fc6_dilation=fc6_dilation, groups=groups,
                           batch_norm=batch_norm, input_space=input_space, geometry=geometry, lrn=lrn,
                           dropout=dropout)
        w1, w2, w3, w4, w5 = widths
        self.in_channels, self.input_space, self.geometry = in_channels, input_space, geometry
        self.widths, self.fc_channels = tuple(widths), fc_channels
        deploy = geometry == "deploy"
        self.conv1 = ConvBNReLU(in_channels, w1, 11, 4, 0 if deploy else 5, batch_norm=batch_norm)
        self.pool1 = _pool(deploy, 2)
        self.norm1 = _lrn() if lrn else nn.Identity()
        self.conv2 = ConvBNReLU(w1, w2, 5, 1, 2, groups=g, batch_norm=batch_norm)
        self.pool2 = _pool(deploy, 2)
        self.norm2 = _lrn() if lrn else nn.Identity()
        self.conv3 = ConvBNReLU(w2, w3, 3, 1, 1, batch_norm=batch_norm)
        self.conv4 = ConvBNReLU(w3, w4, 3, 1, 1, groups=g, batch_norm=batch_norm)
        self.conv5 = ConvBNReLU(w4, w5, 3, 1, 1, groups=g, batch_norm=batch_norm)
        self.pool5 = _pool(deploy, 2 if deploy else 1)
        # deploy: an undilated, unpadded fc6 = a fully connected layer on a 227 input (6x6 pool5 map)
        dil6 = 1 if deploy else fc6_dilation
        pad6 = 0 if deploy else fc6_dilation * (fc6_kernel - 1) // 2
        self.fc6 = ConvBNReLU(w5, fc_channels, fc6_kernel, 1, pad6, dilation=dil6, batch_norm=batch_norm)
        self.drop6 = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc7 = ConvBNReLU(fc_channels, fc_channels, 1, batch_norm=batch_norm)
        self.drop7 = nn.Dropout(dropout) if dropout else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian (He) init. The authors started from Krähenbühl's k-means init (baselines issue)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        return self.fc_channels

    def forward_features(self, x: Tensor, layers: Sequence[str] = CONV_LAYERS,
                         conv1_residual: Tensor | None = None) -> dict[str, Tensor]:
        """Named post-ReLU activations. Stops after the deepest requested layer.

        Args:
            x: N x in_channels x H x W.
            layers: any of conv1..conv5, fc6, fc7.
            conv1_residual: optional N x widths[0] x h1 x w1 (conv1's output size) added to conv1's
                pre-activation, before its batch norm and ReLU: the "color" fine-tuning mode sums a
                second conv1 branch on ab with conv1(L) there (see ssl_bench.models.prepare).
        Returns:
            dict layer -> N x C x h x w.
        """
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise ConfigError(f"unknown layer(s) {sorted(unknown)}; expected a subset of {LAYERS}")
        last = max(LAYERS.index(name) for name in layers)
        out: dict[str, Tensor] = {}
        for name in LAYERS[: last + 1]:
            block = getattr(self, name)
            if name == "conv1" and conv1_residual is not None:
                # Explicit conv -> (+ residual) -> BN/Identity -> ReLU, so the sum happens before
                # the normalisation and the non-linearity, as in the authors' colour variant.
                x = block[2](block[1](block[0](x) + conv1_residual))
            else:
                x = block(x)
            if name in ("fc6", "fc7"):  # Caffe's dropout is in place: the fc blob itself is dropped
                x = getattr(self, f"drop{name[2]}")(x)
            if name in layers:
                out[name] = x
            if name == "conv1":
                x = self.norm1(self.pool1(x))
            elif name == "conv2":
                x = self.norm2(self.pool2(x))
            elif name == "conv5":
                x = self.pool5(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """N x in_channels x H x W -> fc7 map N x fc_channels x H/16 x W/16 (roughly)."""
        return self.forward_features(x, ("fc7",))["fc7"]


def alexnet(**kwargs) -> AlexNet:
    """The faithful colorization AlexNet (defaults = the authors' net)."""
    return AlexNet(**kwargs)


def alexnet_small(**kwargs) -> AlexNet:
    """CPU-sized variant for the embedded default: half widths, 512-wide fc, fc6 a 3x3 conv."""
    defaults = dict(widths=(48, 128, 192, 192, 128), fc_channels=512, fc6_kernel=3, fc6_dilation=1)
    return AlexNet(**{**defaults, **kwargs})


def count_flops(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates x2 of the conv layers for one forward pass of input x (N included)."""
    flops = 0

    def hook(mod: nn.Conv2d, _inp, out: Tensor) -> None:
        nonlocal flops
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        flops += 2 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return flops
