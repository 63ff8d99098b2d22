"""Input conventions: the tensor an imported network was fed, and the conversion from the suite's own input.

The suite's data path feeds every trunk a "suite space" tensor made by ``ssl_bench.models.inputs.trunk_input``:
``"L"`` = lightness centred as L - 50 (N x 1), ``"rgb"`` = sRGB in [0, 1] normalised by the ImageNet
mean and std (N x 3). A network trained elsewhere expected something else: Caffe's BGR in 0..255 minus
a per-channel mean, raw L in 0..100, CIE Lab for a colour network. `InputConvention.to_native` turns the
suite tensor into exactly that, and `ConventionTrunk` wraps an imported net so that every evaluator keeps
feeding suite-space input while the network sees its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.color import rgb_to_lab
from ssl_bench.errors import ConfigError
from ssl_bench.models.inputs import L_CENTER, RGB_MEAN, RGB_STD
from ssl_bench.models.layers import CONV_LAYERS

__all__ = ["CHANNELS", "CONVENTIONS", "ConventionTrunk", "InputConvention", "convention_named", "suite_convention",
           "wrap_native"]

CHANNELS = ("rgb", "bgr", "L", "lab")


@dataclass(frozen=True)
class InputConvention:
    """The tensor the original network was fed, described from an sRGB image.

    Attributes:
        channels: "rgb", "bgr", "L" (lightness only) or "lab" (CIE Lab, L first).
        scale: multiplier applied to the 0..1 values of rgb/bgr (255.0 for Caffe nets); 1.0 for L/lab,
            whose values are already in their natural units (L in 0..100, ab in about -110..110).
        mean: per-channel values subtracted after scaling, in the network's channel order
            (Caffe's BGR ImageNet mean 104/117/123; (50,) for a centred-L net).
        std: per-channel divisors applied after the mean (torchvision-style); () = 1.
    """

    channels: str
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputConvention:
        return cls(str(d["channels"]), float(d.get("scale", 1.0)), tuple(float(v) for v in d.get("mean", ())),
                   tuple(float(v) for v in d.get("std", ())))

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ConfigError(f"input convention: channels must be one of {CHANNELS}, got {self.channels!r}")
        n = self.in_channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ConfigError(f"input convention: {name} needs {n} value(s) for {self.channels!r} input, "
                                  f"got {list(values)}")
        if any(s == 0 for s in self.std):
            raise ConfigError(f"input convention: std must be non-zero, got {list(self.std)}")

    @property
    def in_channels(self) -> int:
        """Channels of the network's own input."""
        return 1 if self.channels == "L" else 3

    @property
    def suite_space(self) -> str:
        """The suite input space that carries what this network needs: "L" for a lightness-only net, else "rgb"."""
        return "L" if self.channels == "L" else "rgb"

    def same_as(self, other: InputConvention) -> bool:
        """The same conversion (within float rounding; an empty mean/std is 0/1)."""
        return _close(self, other)

    def is_suite(self) -> bool:
        """True when the network's own input is exactly the suite's (no conversion needed)."""
        return self.same_as(suite_convention(self.suite_space))

    def to_native(self, x: Tensor, space: str | None = None) -> Tensor:
        """Suite-space input -> the network's own input.

        Args:
            x: N x C x H x W in suite ``space``: "L" (N x 1, L - 50), "rgb" (N x 3, ImageNet-normalised
                sRGB) or "lab" (N x 3, (L - 50, a, b): the colour fine-tuning mode of an L net, whose ab
                channels feed a separate branch and pass through unchanged).
            space: default `suite_space`.
        Returns:
            N x C' x H x W: ((value * scale) - mean) / std in the network's channel order.
        """
        space = space or self.suite_space
        if space == "lab":
            if self.channels != "L":
                raise ConfigError(f"input convention {self.channels!r}: the 'lab' suite input (colour branch) "
                                  "exists only for lightness nets")
            return torch.cat([self.to_native(x[:, :1], "L"), x[:, 1:]], 1)
        values = _from_suite(x, space, self.channels)
        shape = (1, -1, 1, 1)
        if self.scale != 1.0:
            values = values * self.scale
        if self.mean:
            values = values - torch.tensor(self.mean, dtype=values.dtype, device=values.device).view(shape)
        if self.std:
            values = values / torch.tensor(self.std, dtype=values.dtype, device=values.device).view(shape)
        return values


def _close(a: InputConvention, b: InputConvention, tol: float = 1e-6) -> bool:
    def same(u: Sequence[float], v: Sequence[float], default: float) -> bool:
        u, v = list(u) or [default] * len(v), list(v) or [default] * len(u)
        return len(u) == len(v) and all(abs(p - q) <= tol * max(1.0, abs(q)) for p, q in zip(u, v))
    return (a.channels == b.channels and abs(a.scale - b.scale) <= tol
            and same(a.mean, b.mean, 0.0) and same(a.std, b.std, 1.0))


def _from_suite(x: Tensor, space: str, channels: str) -> Tensor:
    """Suite tensor -> the unscaled channels the convention starts from (rgb/bgr in 0..1, L in 0..100, Lab)."""
    expected = {"L": 1, "rgb": 3}.get(space)
    if expected is None:
        raise ConfigError(f"input space: expected 'L', 'rgb' or 'lab', got {space!r}")
    if x.dim() != 4 or x.shape[1] != expected:
        raise ValueError(f"suite {space!r} input: expected N x {expected} x H x W, got {tuple(x.shape)}")
    if space == "L":
        if channels != "L":
            raise ConfigError(f"input convention {channels!r} needs colour, but the suite input is lightness only")
        return x + L_CENTER
    shape = (1, 3, 1, 1)
    rgb = x * torch.tensor(RGB_STD, dtype=x.dtype, device=x.device).view(shape) \
        + torch.tensor(RGB_MEAN, dtype=x.dtype, device=x.device).view(shape)
    if channels == "rgb":
        return rgb
    if channels == "bgr":
        return rgb.flip(1)
    lab = rgb_to_lab(rgb.clamp(0.0, 1.0)).to(x.dtype)
    return lab[:, :1] if channels == "L" else lab


def suite_convention(space: str) -> InputConvention:
    """The convention of the suite's own input space ("L" or "rgb")."""
    if space == "L":
        return InputConvention("L", 1.0, (L_CENTER,))
    if space == "rgb":
        return InputConvention("rgb", 1.0, tuple(RGB_MEAN), tuple(RGB_STD))
    raise ConfigError(f"input space: expected 'L' or 'rgb', got {space!r}")


# The named conventions of ``ssl-bench import-weights --convention``.
CONVENTIONS: dict[str, InputConvention] = {
    # Caffe nets (CaffeNet, Doersch, Pathak, Krähenbühl, BiGAN): BGR in 0..255 minus the ImageNet mean pixel
    "bgr255-caffe-mean": InputConvention("bgr", 255.0, (104.0, 117.0, 123.0)),
    "rgb01": InputConvention("rgb", 1.0),
    "rgb-imagenet-std": suite_convention("rgb"),
    # Zhang et al.'s colorization net, Goyal et al.'s Caffe2 and VISSL colorization: L - 50
    "L50": suite_convention("L"),
    "L": InputConvention("L", 1.0),
    "lab": InputConvention("lab", 1.0),
}


def convention_named(name: str, key: str = "--convention") -> InputConvention:
    """The named convention; the error lists the names."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ConfigError(f"{key}: unknown input convention {name!r}; expected one of {sorted(CONVENTIONS)}") from None


class ConventionTrunk(nn.Module):
    """A network fed in its own input convention, seen from the suite: it takes suite-space input.

    ``forward_features(x, layers)`` converts ``x`` with ``convention.to_native`` and runs the wrapped
    trunk; everything else an evaluator reads (``input_space``, ``in_channels``, ``widths``,
    ``fc_channels``, ``out_channels``, ``config``) describes the suite side. ``trunk`` is the wrapped
    network (an AlexNet, or a prepared module around one), ``rewrap`` puts a prepared copy of it back
    behind the same conversion.

    Args:
        trunk: a module with ``forward_features(x, layers)`` taking the network's own input.
        convention: what that input is.
        input_space: the suite space fed to this wrapper; default the convention's (``"lab"`` for a
            lightness net with a colour branch).
    """

    def __init__(self, trunk: nn.Module, convention: InputConvention, input_space: str | None = None) -> None:
        super().__init__()
        self.trunk, self.convention = trunk, convention
        # a colour branch added around a lightness net reads (L - 50, a, b): see ssl_bench.models.prepare
        inner = getattr(trunk, "input_space", None)
        self.input_space = input_space or ("lab" if inner == "lab" else convention.suite_space)
        self.in_channels = 1 if self.input_space == "L" else 3
        self.widths = tuple(getattr(trunk, "widths", ()))
        self.fc_channels = getattr(trunk, "fc_channels", None)
        self.config = {**dict(getattr(trunk, "config", {})), "input_convention": convention.to_dict()}

    @property
    def out_channels(self) -> int:
        return self.trunk.out_channels

    def to_native(self, x: Tensor) -> Tensor:
        """Suite-space N x C x H x W -> the wrapped network's own input."""
        return self.convention.to_native(x, self.input_space)

    def rewrap(self, module: nn.Module) -> ConventionTrunk:
        """``module`` (e.g. a prepared copy of ``trunk``) behind this wrapper's conversion."""
        return ConventionTrunk(module, self.convention)

    def forward_features(self, x: Tensor, layers: Sequence[str] = CONV_LAYERS) -> dict[str, Tensor]:
        """Suite-space N x C x H x W -> {layer: N x C_l x h x w}, as the wrapped trunk's forward_features."""
        return self.trunk.forward_features(self.to_native(x), layers)

    def forward(self, x: Tensor) -> Tensor:
        """Suite-space input -> the fc7 map."""
        return self.forward_features(x, ("fc7",))["fc7"]


def wrap_native(trunk: nn.Module, convention: dict[str, Any] | InputConvention | None) -> nn.Module:
    """``trunk`` as the suite feeds it: unchanged when ``convention`` is None or the suite's own, else a
    `ConventionTrunk`."""
    if convention is None:
        return trunk
    conv = convention if isinstance(convention, InputConvention) else InputConvention.from_dict(convention)
    return trunk if conv.is_suite() else ConventionTrunk(trunk, conv)
