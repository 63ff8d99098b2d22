"""Weight preparation for PASCAL VOC fine-tuning (method reference 1.6).

After pretraining, the authors (1) absorb batch norm into the convolution weights, (2) run
Krähenbühl et al.'s gradient-ratio calibration on the absorbed weights (``magic_init -cs``: whole
layers scaled so that all learn at the same rate; the filters and the per-unit balance are kept;
``rescale="calibrate"``), and (3) for detection turn fc6/fc7 back into fully connected layers. The
suite also offers per-unit rescaling to zero mean and unit variance (``rescale="per_unit"``) and no
rescaling (``"none"``). Two transfer modes exist for a colorization (L) trunk:

- "gray" ("Ours (gray)"): fine-tune on L only; the trunk as it is.
- "color" ("Ours (color)"): a second conv1 branch reads ab (scaled by ``AB_SCALE``), its filters
  initialised to zero and learned; its output is summed with conv1(L) before the ReLU
  (`ColorInputTrunk`).

RGB trunks (other pretexts) transfer in mode "rgb", the split-brain trunk (`SplitBrainAlexNet`, two
disjoint half-width AlexNets on L and ab) in mode "lab": each step is applied to the two halves (batch
norm absorbed in each, both calibrated together as the one net they form, fc6/fc7 of the halves joined
into block-diagonal layers), and the whole net, read through the concatenated features of its halves,
is fine-tuned. The prepared module's ``input_space`` says how to feed uint8 images:
``trunk_input(images, module.input_space)`` ("L", "rgb" or "lab").
Prepared modules are saved and loaded by `ssl_bench.models.checkpoint` (save_prepared / load_prepared).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_bench.data.images import DECODE_ERRORS, DataLayoutError, decode_rgb, eval_transform, list_images
from ssl_bench.errors import CheckpointError, ConfigError
from ssl_bench.models.alexnet import CONV_LAYERS, LAYERS, AlexNet
from ssl_bench.models.init import TOP_NAME, calibrate_gradient_ratios, rescale_units, top_gradient_ratios
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.split_brain import HALVES, SplitBrainAlexNet

__all__ = [
    "AB_SCALE", "AUTO_MODES", "CALIBRATION_DRAWS", "CALIBRATION_ROUNDS", "DEFAULT_RESCALE_SIZE", "MODES",
    "RESCALE_METHODS",
    "ColorInputTrunk", "absorb_batch_norm", "calibrate_for_transfer", "fc_layers", "prepare_for_transfer",
    "prepare_with_report", "prepared_mode", "rescale_batch", "rescale_for_transfer", "resolve_mode", "resolve_rescale",
]

# The authors' scale of the ab input of the colour branch (method reference 1.6).
AB_SCALE = 0.693
MODES: tuple[str, ...] = ("auto", "gray", "color", "rgb", "lab")
# the mode "auto" picks for each input space
AUTO_MODES = {"L": "gray", "rgb": "rgb", "lab": "lab"}
# The authors fine-tune on 227 x 227 crops; the rescaling statistics are measured at that size.
DEFAULT_RESCALE_SIZE = 227
RESCALE_METHODS: tuple[str, ...] = ("calibrate", "per_unit", "none")
# magic_init's calibrateGradientRatio makes at most 10 rounds. It draws the random gradients once
# per round, but one draw estimates E||dL/dW||^2 only to within 2-60% per layer (measured, docs/protocols.md),
# so each round here averages 256 draws (about 2% per layer); draws=1 is magic_init's own setting.
CALIBRATION_ROUNDS, CALIBRATION_DRAWS = 10, 256


# --------------------------------------------------------------------------- batch norm absorption


@torch.no_grad()
def absorb_batch_norm(trunk: AlexNet | SplitBrainAlexNet) -> AlexNet | SplitBrainAlexNet:
    """A new AlexNet without batch norm whose convolutions fold in ``trunk``'s BN running statistics.

    Each block is conv -> BN(affine=False) -> ReLU. In eval mode BN computes
    ``y = (W x + b - mean) / s`` with ``s = sqrt(running_var + eps)``, per output channel, so
    ``W' = W / s`` and ``b' = (b - mean) / s`` give the same pre-activation with no BN. The result
    equals ``trunk`` in eval mode (train-mode batch statistics are not a fixed function and cannot
    be folded). The arithmetic runs in float64 and is cast back, so the folded net agrees to
    float rounding.

    Args:
        trunk: an AlexNet (any mode; its running statistics are used), or a SplitBrainAlexNet (each
            half absorbed). Not modified.
    Returns:
        a new trunk of the same class with ``config["batch_norm"] = False`` and otherwise the same
        config, on the same device / dtype, in ``trunk``'s training mode. A trunk already without BN is copied.
    """
    if isinstance(trunk, SplitBrainAlexNet):
        return _absorb_halves(trunk)
    if not isinstance(trunk, AlexNet):
        raise TypeError(f"absorb_batch_norm expects an AlexNet trunk, got {type(trunk).__name__}")
    if not trunk.config.get("batch_norm", True):
        return copy.deepcopy(trunk)
    with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten: keep the caller's RNG
        absorbed = AlexNet(**{**trunk.config, "batch_norm": False})
    ref = trunk.conv1[0].weight
    absorbed.to(device=ref.device, dtype=ref.dtype)
    for name in LAYERS:
        conv, bn = getattr(trunk, name)[0], getattr(trunk, name)[1]
        new_conv = getattr(absorbed, name)[0]
        weight, bias = conv.weight.double(), conv.bias.double()
        if isinstance(bn, _BatchNorm):
            if bn.running_mean is None or bn.running_var is None:
                raise CheckpointError(f"{name}: batch norm without running statistics "
                                      "(track_running_stats=False) cannot be absorbed")
            if bn.affine:  # not the suite's layout, but folding the affine part is one more line
                gamma, beta = bn.weight.double(), bn.bias.double()
            else:
                gamma, beta = torch.ones_like(bias), torch.zeros_like(bias)
            scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = (bias - bn.running_mean.double()) * scale + beta
        new_conv.weight.copy_(weight.to(new_conv.weight.dtype))
        new_conv.bias.copy_(bias.to(new_conv.bias.dtype))
    absorbed.train(trunk.training)
    return absorbed


def _absorb_halves(trunk: SplitBrainAlexNet) -> SplitBrainAlexNet:
    """A split-brain trunk with each half absorbed (the halves share no layer, so each folds alone)."""
    absorbed = copy.deepcopy(trunk)
    absorbed.l_half, absorbed.ab_half = (absorb_batch_norm(half) for half in trunk.halves)
    absorbed.config = {**trunk.config, "batch_norm": False}
    return absorbed


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in module.modules())


# ------------------------------------------------------------------------------------ rescaling


def _trunk_and_input(trunk: nn.Module, images: Tensor) -> tuple[nn.Module, Tensor]:
    """The L / RGB trunk to rescale (a ColorInputTrunk's wrapped one) and its checked input."""
    if isinstance(trunk, ColorInputTrunk):
        if images.dim() == 4 and images.shape[1] == 3:
            images = images[:, :1]
        trunk = trunk.trunk
    channels = getattr(trunk, "in_channels", None)
    if images.dim() != 4 or (channels is not None and images.shape[1] != channels):
        raise ValueError(f"rescaling images: expected N x {channels} x H x W network input for a "
                         f"{getattr(trunk, 'input_space', '?')!r} trunk, got {tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError("rescaling images: need at least one image")
    return trunk, images


def rescale_for_transfer(trunk: nn.Module, images: Tensor) -> dict[str, tuple[float, float]]:
    """Krähenbühl's per-unit rescaling (beta = 0) of ``trunk``'s weights on ``images``, in place.

    This is `ssl_bench.models.init.rescale_units` — no k-means (the pretrained filters are kept)
    and no layer calibration: every Conv2d's pre-activation output gets zero mean and unit variance
    per channel on ``images``, layer by layer. Meant for an absorbed (BN-free) trunk, where it
    actually changes the function; with BN still present the BN running stats are reset instead.

    Args:
        trunk: an AlexNet, or a `ColorInputTrunk` (its wrapped L trunk is rescaled; the zero
            colour branch is left alone so that it still starts as a no-op).
        images: network input for the trunk before any colour branch: N x 1 x H x W (L - 50) or
            N x 3 x H x W (normalised RGB). For a ColorInputTrunk, N x 3 (L - 50, a, b) is also
            accepted and its first channel used.
    Returns:
        layer name -> (mean, std) of the units before rescaling (averaged over units).
    """
    return rescale_units(*_trunk_and_input(trunk, images))


def calibrate_for_transfer(trunk: nn.Module, images: Tensor, seed: int = 0,
                           iterations: int = CALIBRATION_ROUNDS, draws: int = CALIBRATION_DRAWS) -> dict[str, Any]:
    """Krähenbühl's gradient-ratio calibration of ``trunk``'s weights on ``images``, in place: the
    authors' preparation of the dagger rows (`ssl_bench.models.init.calibrate_gradient_ratios`, a
    random 1000-way top, random Gaussian gradients, up to ``iterations`` rounds).

    Pretrained filters and the per-unit balance are kept; whole layers are scaled so that every
    layer's E||dL/dW||^2 / ||W||^2 is the same. Meant for an absorbed (BN-free) trunk, in the
    geometry it will be fine-tuned in (the authors: deploy, 227 crops).

    Args:
        trunk, images: as `rescale_for_transfer` (a ColorInputTrunk's zero colour branch is left alone).
        seed: the random top and gradients.
        draws: random gradient draws averaged per round (magic_init: 1; see ``CALIBRATION_DRAWS``).
    A split-brain trunk is calibrated half by half (`_calibrate_halves`).

    Returns:
        {"rounds", "scales": layer name -> weight factor} (a split-brain trunk: also "half_rounds" and
        "balance_rounds").
    """
    base, images = _trunk_and_input(trunk, images)
    if isinstance(base, SplitBrainAlexNet):
        return _calibrate_halves(base, images, seed, iterations, draws)
    return calibrate_gradient_ratios(base, images, iterations=iterations, draws=draws, seed=seed)


def _calibrate_halves(trunk: SplitBrainAlexNet, images: Tensor, seed: int, iterations: int,
                      draws: int) -> dict[str, Any]:
    """Gradient-ratio calibration of a split-brain trunk, in place: every layer of both halves ends
    with the same E||dL/dW||^2 / ||W||^2 under one random top on the concatenated fc7.

    magic_init's update assumes that scaling one layer multiplies every other layer's ratio by the
    same factor; with two parallel halves it reaches only the layers of the same half, and the
    rounds diverge. So each half is calibrated as the AlexNet it is (its own random top: within a
    half the ratios become equal), then `_balance_halves` brings both halves to one level with the
    update that accounts for the two chains (and equalises to a tighter tolerance than magic_init's
    stop test, which allows rho to differ by about 5% per layer).

    Args:
        images: N x 3 x H x W (L - 50, a, b); the L half is calibrated on channel 0, the ab half on 1-2.
    Returns:
        {"rounds": the most rounds either half made, "half_rounds": half -> rounds, "balance_rounds",
        "scales": "l_half.conv1.0"... -> total weight factor}.
    """
    if _has_batch_norm(trunk):
        raise ConfigError("rescale=calibrate: a split-brain trunk is calibrated without batch norm "
                          "(absorb it first: absorb_bn=true)")
    scales: dict[str, float] = {}
    rounds: dict[str, int] = {}
    for name, half, x in zip(HALVES, trunk.halves, (images[:, :1], images[:, 1:])):
        report = calibrate_gradient_ratios(half, x, iterations=iterations, draws=draws, seed=seed)
        rounds[name] = report["rounds"]
        scales.update({f"{name}.{k}": v for k, v in report["scales"].items() if k != TOP_NAME})
    balance = _balance_halves(trunk, images, iterations, draws, seed)
    for key in scales:
        scales[key] *= balance["scales"][key]
    return {"rounds": max(rounds.values()), "half_rounds": rounds, "balance_rounds": balance["rounds"],
            "scales": scales}


def _balance_halves(trunk: SplitBrainAlexNet, images: Tensor, iterations: int, draws: int, seed: int,
                    tolerance: float = 0.01) -> dict[str, Any]:
    """Rounds of magic_init's update generalised to two parallel chains, on a BN-free split-brain
    trunk, in place, until every layer's log rho is within ``tolerance`` of the mean (one random top
    on the concatenated fc7, kept fixed; rho = sqrt(E||dL/dW||^2 / ||W||^2)).

    With each bias following the scale of its input, multiplying the weights of layer j of a half by
    e^(a_j) moves log rho_k of that half's layer k by A - 2 a_k (A = the sum of the half's a_j: k's
    input or its backward signal is scaled by every other a_j) and leaves the other half alone. Every
    layer reaches the mean T of all log rho with A = n (T - m) / (n - 2) and a_k = (log rho_k - T + A) / 2
    (n layers per half, m the half's mean log rho); for one chain (A = 0) this is magic_init's update.

    Returns:
        {"rounds", "scales": "l_half.conv1.0"... -> total weight factor}.
    """
    n = len(LAYERS)
    total = {f"{half}.{name}.0": 1.0 for half in HALVES for name in LAYERS}
    rounds = 0
    for it in range(iterations):
        ratios = top_gradient_ratios(trunk, images, draws=draws, seed=seed + 7919 + it)
        log_rho = {k: 0.5 * math.log(ratios[k]) for k in total}
        target = sum(log_rho.values()) / len(log_rho)
        if all(abs(v - target) < tolerance for v in log_rho.values()):
            break
        for half_name, half in zip(HALVES, trunk.halves):
            own = [log_rho[f"{half_name}.{name}.0"] for name in LAYERS]
            shift = n * (target - sum(own) / n) / (n - 2)
            factors = [math.exp((r - target + shift) / 2) for r in own]
            _scale_half(half, factors)
            for name, f in zip(LAYERS, factors):
                total[f"{half_name}.{name}.0"] *= f
        rounds += 1
    return {"rounds": rounds, "scales": total}


@torch.no_grad()
def _scale_half(half: AlexNet, factors: Sequence[float]) -> None:
    """Weights of conv1..fc7 times ``factors``; each bias times the product of the factors up to its
    layer, the scale of that layer's output (see `_balance_halves`)."""
    cumulative = 1.0
    for name, f in zip(LAYERS, factors):
        conv: nn.Conv2d = getattr(half, name)[0]
        cumulative *= f
        conv.weight.mul_(f)
        conv.bias.mul_(cumulative)


# ------------------------------------------------------------------------------------ fc layers


@torch.no_grad()
def fc_layers(trunk: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """fc6 and fc7 as fully connected layers, for a detector's box head on RoI-pooled features.

    fc6 is a k x k convolution (k = ``fc6_kernel``) on the pool5 map; as an FC layer it reads an
    RoI-pooled C x k x k feature flattened in (C, k, k) order (``roi.flatten(1)``): weight
    (out, C, k, k) -> (out, C*k*k). fc7 is 1 x 1: weight (out, in, 1, 1) -> (out, in). Each is
    followed by a ReLU in the trunk (batch norm having been absorbed).

    The authors' fc6 is 6 x 6 with dilation 2 because their colorization net keeps pool5 at stride
    1 (a dense, "a trous" fc6 on a finer map). That dilation is dropped here: the FC layer reads a
    contiguous k x k RoI grid, as the authors did when turning fc6 back into an FC layer for Fast
    R-CNN — i.e. ``Linear(fc6)(roi.flatten(1)) == conv2d(roi, W6, dilation=1, padding=0)``.

    A split-brain trunk's halves each have their fc6/fc7; on the concatenated pool5 map (the L half's
    channels first) they are one block-diagonal layer each, which computes the halves' concatenated
    outputs exactly (fine-tuning may then fill the zero blocks: the whole net is fine-tuned).

    Args:
        trunk: an absorbed (BN-free) AlexNet or SplitBrainAlexNet, or a ColorInputTrunk around an AlexNet.
    Returns:
        (fc6, fc7) new ``nn.Linear`` modules with copied weights and biases (same device / dtype).
    Raises:
        ValueError: the trunk still has batch norm (a Linear cannot carry it; absorb it first).
    """
    base = trunk.trunk if isinstance(trunk, ColorInputTrunk) else trunk
    if isinstance(base, SplitBrainAlexNet):
        pairs = zip(*(fc_layers(half) for half in base.halves))
        return tuple(_block_diagonal(*pair) for pair in pairs)  # type: ignore[return-value]
    if _has_batch_norm(base):
        raise ValueError("fc_layers: the trunk still has batch norm after fc6/fc7; absorb it first "
                         "(absorb_batch_norm / prepare_for_transfer with absorb_bn=True)")
    layers = []
    for name in ("fc6", "fc7"):
        conv: nn.Conv2d = getattr(base, name)[0]
        out_c, in_c, kh, kw = conv.weight.shape
        if conv.groups != 1:
            raise ValueError(f"fc_layers: {name} is a grouped convolution; cannot flatten it")
        fc = nn.Linear(in_c * kh * kw, out_c, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        fc.weight.copy_(conv.weight.reshape(out_c, in_c * kh * kw))
        fc.bias.copy_(conv.bias)
        layers.append(fc)
    return layers[0], layers[1]


@torch.no_grad()
def _block_diagonal(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One Linear computing ``cat([first(x1), second(x2)])`` on ``cat([x1, x2])``: (o1 + o2) x (i1 + i2) weight."""
    w = torch.block_diag(first.weight, second.weight)
    fc = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    fc.weight.copy_(w)
    fc.bias.copy_(torch.cat([first.bias, second.bias]))
    return fc


# ------------------------------------------------------------------------------------ colour mode


class ColorInputTrunk(nn.Module):
    """An L trunk plus a learned conv1 branch on ab: "Ours (color)" fine-tuning.

    conv1's pre-activation becomes ``conv1(L) + conv1_ab(AB_SCALE * ab)`` (then BN if any, then
    ReLU). ``conv1_ab`` has conv1's kernel, stride and padding and starts at zero (weights and
    bias), so at step 0 the network is exactly the L trunk; gradients reach it through the sum, so
    it learns from the first step.

    Input: N x 3 x H x W = (L - 50, a, b), i.e. ``trunk_input(images, "lab")``.

    Attributes: ``trunk`` (the wrapped AlexNet, whose layers conv1..fc7 are reachable there),
    ``conv1_ab``, ``input_space = "lab"``, ``in_channels = 3``, ``widths``, ``fc_channels``,
    ``out_channels``, ``config`` (the wrapped trunk's config plus ``{"color_branch": True}``).
    """

    input_space = "lab"
    in_channels = 3

    def __init__(self, trunk: AlexNet) -> None:
        super().__init__()
        if isinstance(trunk, ColorInputTrunk):
            raise CheckpointError("ColorInputTrunk: the trunk already has a colour branch")
        if getattr(trunk, "input_space", None) != "L" or getattr(trunk, "in_channels", None) != 1:
            raise CheckpointError(f"ColorInputTrunk wraps an L trunk (1 input channel); this trunk reads "
                                  f"{getattr(trunk, 'input_space', '?')!r} with {getattr(trunk, 'in_channels', '?')} "
                                  "channel(s)")
        self.trunk = trunk
        conv1: nn.Conv2d = trunk.conv1[0]
        self.conv1_ab = nn.Conv2d(2, conv1.out_channels, conv1.kernel_size, conv1.stride, conv1.padding,
                                  conv1.dilation, bias=True, device=conv1.weight.device,
                                  dtype=conv1.weight.dtype)
        # Zero start: the fine-tuned net begins as the pretrained L net, the ab filters are learned.
        nn.init.zeros_(self.conv1_ab.weight)
        nn.init.zeros_(self.conv1_ab.bias)
        self.widths = tuple(trunk.widths)
        self.fc_channels = trunk.fc_channels
        self.config = {**trunk.config, "color_branch": True}

    @property
    def out_channels(self) -> int:
        return self.trunk.out_channels

    def forward_features(self, x: Tensor, layers: Sequence[str] = CONV_LAYERS) -> dict[str, Tensor]:
        """Named post-ReLU activations, as `AlexNet.forward_features`.

        Args:
            x: N x 3 x H x W, (L - 50, a, b).
            layers: any of conv1..conv5, fc6, fc7.
        Returns:
            dict layer -> N x C x h x w.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ColorInputTrunk expects N x 3 x H x W (L-50, a, b) input, got {tuple(x.shape)}")
        residual = self.conv1_ab(x[:, 1:] * AB_SCALE)
        return self.trunk.forward_features(x[:, :1], layers, conv1_residual=residual)

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x H x W -> fc7 map N x fc_channels x h x w."""
        return self.forward_features(x, ("fc7",))["fc7"]


# ------------------------------------------------------------------------------------ preparation


def prepared_mode(trunk: nn.Module) -> str:
    """The transfer mode a prepared module implements: "color", "gray", "rgb" or "lab"."""
    if hasattr(trunk, "rewrap"):  # ConventionTrunk: the mode of the network inside
        return prepared_mode(trunk.trunk)
    if isinstance(trunk, ColorInputTrunk):
        return "color"
    return AUTO_MODES.get(getattr(trunk, "input_space", None), "rgb")


def resolve_mode(trunk: nn.Module, mode: str) -> str:
    """Check ``mode`` against the trunk's input space; "auto" -> "gray" (L), "rgb" (RGB) or "lab" (split-brain)."""
    if mode not in MODES:
        raise ConfigError(f"finetune.mode: expected one of {list(MODES)}, got {mode!r}")
    space = getattr(trunk, "input_space", None)
    if space not in AUTO_MODES or isinstance(trunk, ColorInputTrunk):
        raise ConfigError(f"finetune.mode={mode!r}: the trunk's input space is {space!r}; expected an "
                          "'L', 'rgb' or 'lab' trunk (prepare a trunk only once)")
    if mode == "auto":
        return AUTO_MODES[space]
    needed = {"rgb": "rgb", "lab": "lab"}.get(mode, "L")
    if space != needed:
        hint = {"rgb": "use finetune.mode=rgb (or auto)", "lab": "use finetune.mode=lab (or auto)"}.get(
            space, "use finetune.mode=gray or color (or auto)")
        raise ConfigError(f"finetune.mode={mode!r} needs a trunk with input space {needed!r}, but this trunk "
                          f"has input space {space!r}; {hint}")
    return mode


def resolve_rescale(rescale: str | bool | None, images: Tensor | None) -> str:
    """The rescaling method: "calibrate", "per_unit" or "none".

    ``None`` keeps the older rule (per_unit when images are given, else none); ``True`` means
    per_unit and ``False`` none. A method other than none needs images.
    """
    if rescale is None:
        return "per_unit" if images is not None else "none"
    if isinstance(rescale, bool):
        return "per_unit" if rescale else "none"
    if rescale not in RESCALE_METHODS:
        raise ConfigError(f"rescale: expected one of {list(RESCALE_METHODS)} (or true / false), got {rescale!r}")
    if rescale != "none" and images is None:
        raise ConfigError(f"rescale={rescale!r} needs images to measure on (rescale images)")
    return rescale


def prepare_with_report(trunk: AlexNet | SplitBrainAlexNet, mode: str = "auto", absorb_bn: bool = True,
                        rescale: str | bool | None = None, images: Tensor | None = None, seed: int = 0,
                        calibration_draws: int = CALIBRATION_DRAWS) -> tuple[nn.Module, dict[str, Any]]:
    """`prepare_for_transfer`, also returning what was done: {"mode", "absorbed_bn", "rescale",
    "unit_stats" (per_unit) or "calibration" (calibrate: {"rounds", "scales"})}."""
    resolved = resolve_mode(trunk, mode)
    method = resolve_rescale(rescale, images)
    prepared = absorb_batch_norm(trunk) if absorb_bn else copy.deepcopy(trunk)
    report: dict[str, Any] = {"mode": resolved, "absorbed_bn": absorb_bn, "rescale": method}
    if method == "per_unit":
        report["unit_stats"] = rescale_for_transfer(prepared, images)
    elif method == "calibrate":
        report["calibration"] = calibrate_for_transfer(prepared, images, seed, draws=calibration_draws)
    module: nn.Module = ColorInputTrunk(prepared) if resolved == "color" else prepared
    return module.eval(), report


def prepare_for_transfer(trunk: AlexNet | SplitBrainAlexNet, mode: str = "auto", absorb_bn: bool = True,
                         rescale_images: Tensor | None = None, rescale: str | bool | None = None,
                         images: Tensor | None = None, seed: int = 0,
                         calibration_draws: int = CALIBRATION_DRAWS) -> nn.Module:
    """The module to fine-tune on VOC, following the authors' recipe. ``trunk`` is not modified.

    Steps: check ``mode`` against the trunk's input space; absorb batch norm (``absorb_bn``);
    rescale the weights on ``images`` (``rescale``: "calibrate" = Krähenbühl's gradient-ratio
    calibration, the authors' dagger preparation; "per_unit" = per-unit rescaling to zero mean and
    unit variance; "none"); for "color", wrap in `ColorInputTrunk` (after rescaling, so the zero
    branch stays zero).

    Args:
        trunk: a pretrained AlexNet ("L" or "rgb" input space) or SplitBrainAlexNet ("lab"), in the
            geometry it will be fine-tuned in.
        mode: "auto" (gray for L trunks, rgb for RGB trunks, lab for split-brain ones), "gray", "color"
            (L trunks), "rgb" or "lab".
        absorb_bn: fold batch norm into the convolutions (else a copy keeps its BN).
        rescale_images: the older name of ``images`` (give one of them).
        rescale: "calibrate" | "per_unit" | "none", or True (per_unit) / False (none); None (default):
            per_unit when images are given, else none.
        images: network input for the trunk *before* the colour branch — N x 1 x H x W (L - 50) for
            L trunks, N x 3 x H x W (normalised RGB) for RGB trunks, N x 3 x H x W (L - 50, a, b) for
            split-brain trunks.
        seed: the calibration's random top and gradients.
        calibration_draws: random gradient draws averaged per calibration round (magic_init: 1).
    Returns:
        the prepared module, in eval mode; feed it ``trunk_input(images, module.input_space)``.
    Raises:
        ConfigError: a mode the trunk's input space cannot serve (message names finetune.mode), an
            unknown ``rescale``, or a rescaling without images.
    """
    if rescale_images is not None and images is not None:
        raise ValueError("prepare_for_transfer: give images or rescale_images, not both")
    images = images if images is not None else rescale_images
    if hasattr(trunk, "rewrap"):  # an imported net behind its input conversion (ssl_bench.weights.convention)
        native = None if images is None else trunk.to_native(images)
        return trunk.rewrap(prepare_for_transfer(trunk.trunk, mode, absorb_bn, rescale=rescale, images=native,
                                                 seed=seed, calibration_draws=calibration_draws)).eval()
    return prepare_with_report(trunk, mode, absorb_bn, rescale, images, seed, calibration_draws)[0]


def rescale_batch(root: Path, count: int, size: int, space: str) -> Tensor:
    """Network input for measuring rescaling statistics: ``count`` images of folder ``root``
    (spread evenly over the sorted list, so an ImageFolder tree contributes from every class),
    resized (shorter side) and centre-cropped to ``size``, then ``trunk_input(..., space)``.

    Returns:
        N x C x size x size float tensor (N <= count; unreadable files are skipped).
    Raises:
        DataLayoutError: ``root`` is not a folder, holds no images, or none could be decoded.
    """
    if not root.is_dir():
        raise DataLayoutError(f"{root} does not exist; expected a folder of images")
    paths = list_images(root)
    if not paths:
        raise DataLayoutError(f"{root} holds no images")
    if count >= len(paths):
        chosen = paths
    else:
        chosen = [paths[i * len(paths) // count] for i in range(count)]
    transform = eval_transform(size, size)
    images = []
    for p in chosen:
        try:
            images.append(transform(decode_rgb(p)))
        except DECODE_ERRORS:
            continue
    if not images:
        raise DataLayoutError(f"{root}: none of the {len(chosen)} chosen images could be decoded")
    return trunk_input(torch.stack(images), space)
