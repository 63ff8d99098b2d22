"""Colorize images with a trained colorization checkpoint (the paper's use of the network).

The lightness of the output is the input's own L at full resolution; only ab comes from the
network, which sees the image resized so that its short side is 256 px by default (or any other
size, or the image's own). Its ab prediction (at the network's ab grid) is decoded -- annealed mean
with T = 0.38 by default, the paper's choice -- and upsampled bilinearly to the full image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ssl_bench import color
from ssl_bench.errors import ConfigError
from ssl_bench.io import atomic_write_bytes
from ssl_bench.models.checkpoint import CheckpointMismatchError, read_suite_checkpoint
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.losses import resize_to

__all__ = ["DECODE_METHODS", "DEFAULT_SHORT_SIDE", "method_name", "load_colorizer", "predict_ab",
           "net_input_size", "colorize_image", "to_uint8", "grey_rgb", "png_bytes", "save_png", "compare_strip"]

DECODE_METHODS = ("annealed_mean", "mean", "mode")
DEFAULT_SHORT_SIDE = 256


# ---------------------------------------------------------------------------------------------
# Model


def method_name(model: ColorizationPretext) -> str:
    """The colorizer's name in results, captions and answer logs: "colorization/<variant>"."""
    return f"colorization/{model.objective.variant}"


def load_colorizer(checkpoint: str | Path, device: str | torch.device | None = None) -> ColorizationPretext:
    """Rebuild a colorization network from a suite checkpoint, in eval mode.

    The trunk comes from the checkpoint's ``ssl_bench`` entry (``trunk`` config), the head's kind
    from ``variant`` (l2 -> regression, class/full -> 313-way classification). Rebalancing only
    matters for training, so a "full" model gets a uniform prior (its stored class weights are
    loaded with the state dict anyway). ``model.source_meta`` holds the checkpoint's entry.

    Raises FileNotFoundError (no such file) or CheckpointMismatchError (not a suite checkpoint,
    not a colorization model, or weights that do not fit the recorded architecture).
    """
    ckpt = read_suite_checkpoint(checkpoint, pretext="colorization", expected="a colorization model",
                                 hint="pretext=colorization is needed to predict colours")
    variant = ckpt.meta.get("variant")
    if variant not in ("l2", "class", "full"):
        raise CheckpointMismatchError(f"checkpoint {ckpt.path}: unknown colorization variant {variant!r} "
                                      "(expected l2, class or full)")
    objective = ColorObjective(kind="regression" if variant == "l2" else "classification",
                               rebalance=variant == "full")
    if ckpt.meta.get("num_outputs") not in (None, objective.num_outputs):
        raise CheckpointMismatchError(f"checkpoint {ckpt.path}: variant {variant!r} predicts "
                                      f"{objective.num_outputs} outputs, the checkpoint records "
                                      f"num_outputs={ckpt.meta['num_outputs']}")
    uniform = torch.full((color.NUM_BINS,), 1.0 / color.NUM_BINS) if objective.rebalance else None
    model = ckpt.load_model(ColorizationPretext(ckpt.build_trunk(), objective, optimizer=None, prior=uniform,
                                                ab_stride=int(ckpt.meta.get("ab_stride", 8))))
    model.source_meta = dict(ckpt.meta)
    model.source_path = str(ckpt.path)
    if device is not None:
        model.to(device)
    return model.eval()


def _decode(model: ColorizationPretext, out: Tensor, method: str, T: float) -> Tensor:
    if model.objective.kind == "regression":  # the L2 net predicts ab directly: nothing to decode
        return out
    return color.decode(out, method, T)


@torch.no_grad()
def predict_ab(model: ColorizationPretext, L: Tensor, decode: str = "annealed_mean",
               T: float = 0.38) -> Tensor:
    """Decoded ab at the network's ab grid.

    L: float N x 1 x h x w lightness (0..100) on the model's device.
    Returns float32 N x 2 x ceil(h/s) x ceil(w/s), s = the model's ab_stride (the grid its targets
    were built on during training; the fc8 map is resized to it exactly as in ``forward``).
    """
    if decode not in DECODE_METHODS:
        raise ConfigError(f"decode: expected one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    if not T > 0:
        raise ConfigError(f"T must be > 0, got {T}")
    s = model.ab_stride
    x = L - 50.0
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model.head(model.trunk(x))
    h, w = L.shape[-2:]
    out = resize_to(out, (-(-h // s), -(-w // s))).float()
    return _decode(model, out, decode, T).contiguous()


def net_input_size(height: int, width: int, net_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """Size the network sees: None -> short side 256; int n > 0 -> short side n; 0 -> (height,
    width) unchanged; (h, w) -> exactly that."""
    if net_size is None:
        net_size = DEFAULT_SHORT_SIDE
    if isinstance(net_size, (tuple, list)):
        h, w = (int(v) for v in net_size)
        if h < 1 or w < 1:
            raise ConfigError(f"net_size: expected a positive (h, w), got {tuple(net_size)}")
        return h, w
    n = int(net_size)
    if n < 0:
        raise ConfigError(f"net_size: expected a short side >= 0, got {n}")
    if n == 0:
        return height, width
    short = min(height, width)
    return max(1, round(height * n / short)), max(1, round(width * n / short))


def to_uint8(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (any shape) -> uint8 0..255, rounded."""
    return rgb.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def grey_rgb(L: Tensor) -> Tensor:
    """The grey image of a lightness map: float N x 1 x H x W -> uint8 N x 3 x H x W (a = b = 0)."""
    return to_uint8(color.lab_to_rgb(torch.cat([L, torch.zeros_like(L).expand(-1, 2, -1, -1)], 1)))


@torch.no_grad()
def colorize_image(model: ColorizationPretext, image: Tensor, decode: str = "annealed_mean",
                   T: float = 0.38, net_size: int | Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Colorize one image, keeping its own lightness at full resolution.

    image: uint8 3 x H x W sRGB (a grey image, R = G = B, is the intended input; a colour image is
        used only through its L).
    Returns (uint8 3 x H x W sRGB colorization, float32 3 x H x W Lab before rounding to 8 bits,
    whose L is exactly the input's L), both on the CPU.
    """
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 3 x H x W, got {image.dtype} {tuple(image.shape)}")
    device = next(model.parameters()).device
    img = image.to(device)[None]
    H, W = img.shape[-2:]
    L_full = color.l_from_uint8(img)
    size = net_input_size(H, W, net_size)
    # resize the 8-bit image as the training pipeline does (antialiased), then take its L
    L_net = L_full if size == (H, W) else color.l_from_uint8(TF.resize(img, list(size), antialias=True))
    ab = predict_ab(model, L_net, decode, T)
    ab_full = F.interpolate(ab, size=(H, W), mode="bilinear", align_corners=False)
    lab = torch.cat([L_full, ab_full], 1)
    return to_uint8(color.lab_to_rgb(lab))[0].cpu(), lab[0].cpu()


# ---------------------------------------------------------------------------------------------
# Pictures


def png_bytes(image: Tensor) -> bytes:
    """uint8 3 x H x W sRGB -> the bytes of a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Tensor, path: str | Path) -> None:
    """uint8 3 x H x W -> PNG, atomically (temporary file in the same folder, then os.replace)."""
    atomic_write_bytes(path, png_bytes(image))


def compare_strip(grey: Tensor, colorized: Tensor, original: Tensor, gap: int = 4) -> Tensor:
    """grey | colorization | original side by side with white gaps: uint8 3 x H x (3W + 2 gap)."""
    sep = torch.full((3, grey.shape[1], gap), 255, dtype=torch.uint8)
    return torch.cat([grey, sep, colorized, sep, original], 2)
