"""ssl_bench: a self-supervised representation benchmark built around cross-channel encoding."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_trunk(checkpoint: str | Path) -> nn.Module:
    """The trunk of any suite checkpoint (pretrained by the suite or imported), in eval mode.

    ``trunk.forward_features(x, layers)`` takes the network's *own* input tensor: for a suite-trained
    trunk the suite's input (L - 50, or ImageNet-normalised RGB), for an imported one its recorded
    ``input_convention`` (e.g. BGR in 0..255 minus the Caffe mean). ``import ssl_bench`` stays light:
    torch is imported on the first call.
    """
    from ssl_bench.models.checkpoint import read_suite_checkpoint

    return read_suite_checkpoint(checkpoint).load_native_trunk()
