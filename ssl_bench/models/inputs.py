"""How each trunk sees a uint8 image: the input space recorded in every checkpoint."""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_bench import color
from ssl_bench.errors import ConfigError

L_CENTER = 50.0
# ImageNet statistics: the usual normalisation for RGB trunks (supervised and RGB pretexts)
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
INPUT_SPACES = ("L", "rgb", "lab")


def trunk_input(images: Tensor, space: str) -> Tensor:
    """uint8 N x 3 x H x W -> float network input.

    "L": lightness centred as L - 50, N x 1 x H x W (colorization trunks).
    "rgb": sRGB / 255 normalised by the ImageNet mean and std, N x 3 x H x W.
    "lab": (L - 50, a, b), N x 3 x H x W: the "color" fine-tuning mode of an L trunk, whose extra
        conv1 branch reads ab (see ssl_bench.models.prepare).
    """
    if space == "L":
        return color.l_from_uint8(images) - L_CENTER
    if space == "lab":
        lab = color.rgb_to_lab(images)  # uint8: table lookups
        return torch.cat([lab[:, :1] - L_CENTER, lab[:, 1:]], dim=1)
    if space == "rgb":
        x = images.float() / 255.0
        mean = torch.tensor(RGB_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(RGB_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    raise ConfigError(f"input_space: expected one of {INPUT_SPACES}, got {space!r}")
