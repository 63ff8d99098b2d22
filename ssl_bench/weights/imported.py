"""What every importer returns: an AlexNet-family trunk's constructor arguments and weights, and the
input convention the original network expects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


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
        return cls(str(d["channels"]), float(d.get("scale", 1.0)), tuple(d.get("mean", ())), tuple(d.get("std", ())))


@dataclass(frozen=True)
class ImportedWeights:
    """An imported trunk.

    Attributes:
        trunk: ``ssl_bench.models.alexnet.AlexNet`` constructor arguments (geometry, groups, lrn, ...).
        state_dict: the trunk's weights under AlexNet's own key names (``conv1.0.weight`` ...).
        convention: the input the network expects.
        source: the files it came from (recorded in the checkpoint).
        fmt: the format name ("caffe", "caffe2-pkl", "vissl", "state-dict").
        extra: anything else worth keeping (e.g. a colour model's ab branch), stored beside the trunk.
    """

    trunk: dict[str, Any]
    state_dict: dict[str, Tensor]
    convention: InputConvention
    source: str
    fmt: str
    extra: dict[str, Any] = field(default_factory=dict)
