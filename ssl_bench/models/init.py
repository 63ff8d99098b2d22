"""Data-dependent initialisation of Krähenbühl et al. (2016), for any trunk.

The method, layer by layer in execution order: optionally set the weights to spherical k-means
centroids of patches of the layer's input (else keep the trunk's Gaussian weights), run real images
through, rescale every unit so that its pre-activation output has zero mean and unit variance on
that data (their beta = 0), and finally "calibrate" whole layers so that the ratio of expected
gradient magnitude to weight magnitude is the same everywhere ("all layers learn at the same rate").
No labels are used.

A "layer" is any ``nn.Conv2d`` or ``nn.Linear`` the trunk's forward pass executes, found with forward
hooks, so the functions work on the AlexNet trunks of this suite (with or without batch norm, e.g.
after absorbing it into the convolutions before VOC fine-tuning) as well as on torchvision-like nets.
Each layer is taken at its first call in the forward pass.

Layers without a bias cannot be shifted: only their scale is normalised (a following batch norm
removes the mean anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "GaussianInit", "KraehenbuehlInit", "LayerInfo", "calibrate_layers", "find_layers",
    "gradient_ratios", "kmeans_filters", "kraehenbuehl_init", "layer_patches", "rescale_units",
    "spherical_kmeans",
]

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
# Units whose output std is below this are treated as dead: dividing by ~0 would blow them up.
DEAD_STD = 1e-6


class LayerInfo(NamedTuple):
    """A weight layer of a trunk and the batch-norm modules that read its output directly."""

    name: str
    module: nn.Module
    norms: tuple[_BatchNorm, ...]


class _Stop(Exception):
    """Raised from a hook to skip the rest of a forward pass once the wanted tensor is captured."""


@contextmanager
def _preserved_modes(trunk: nn.Module) -> Iterator[None]:
    # Per module, not only the top flag: a trunk may deliberately keep some parts in eval mode.
    modes = [(m, m.training) for m in trunk.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device_of(trunk: nn.Module) -> torch.device:
    p = next(trunk.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _output_tensors(out: Any) -> list[Tensor]:
    """The tensors of a trunk output (a tensor, or a dict / sequence of them)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _output_tensors(o)]
    return []


def find_layers(trunk: nn.Module, images: Tensor) -> list[LayerInfo]:
    """Conv2d / Linear layers of ``trunk`` in execution order, with the batch norms fed by each.

    One eval-mode, no-grad forward pass on (at most two of) ``images`` (N x C x H x W) with hooks.
    A batch norm "follows" a layer when its input is that layer's output tensor itself.
    """
    names = {}
    for name, m in trunk.named_modules():
        names.setdefault(m, name)
    outputs: dict[nn.Module, Tensor] = {}
    norms: dict[nn.Module, list[_BatchNorm]] = {}

    def layer_hook(mod: nn.Module, _inp: tuple, out: Tensor) -> None:
        if mod not in outputs:
            outputs[mod] = out
            norms[mod] = []

    def norm_hook(mod: _BatchNorm, inp: tuple) -> None:
        for layer, out in outputs.items():
            if inp[0] is out and mod not in norms[layer]:
                norms[layer].append(mod)

    handles = []
    for m in trunk.modules():
        if isinstance(m, LAYER_TYPES):
            handles.append(m.register_forward_hook(layer_hook))
        elif isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(norm_hook))
    try:
        with _preserved_modes(trunk), torch.no_grad():
            trunk.eval()
            trunk(images[:2].to(_device_of(trunk)))
    finally:
        for h in handles:
            h.remove()
    return [LayerInfo(names[m], m, tuple(norms[m])) for m in outputs]  # dicts keep call order


def _layer_input(trunk: nn.Module, images: Tensor, layer: nn.Module) -> Tensor:
    """The input of ``layer``'s first call when ``trunk`` runs on ``images`` (stops there)."""
    captured: list[Tensor] = []

    def hook(_mod: nn.Module, inp: tuple) -> None:
        captured.append(inp[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        trunk(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("layer was not called by the trunk's forward pass")
    return captured[0]


def _unit_dims(layer: nn.Module, out: Tensor) -> list[int]:
    """Dimensions to reduce over for per-unit statistics: all but the channel dimension."""
    channel = 1 if isinstance(layer, nn.Conv2d) else out.dim() - 1
    return [d for d in range(out.dim()) if d != channel]


def _unit_stats(layer: nn.Module, out: Tensor) -> tuple[Tensor, Tensor]:
    """Per-unit (mean, std) of a layer output over all other dims, float64, population std."""
    var, mean = torch.var_mean(out.double(), dim=_unit_dims(layer, out), correction=0)
    return mean, var.sqrt()


def _per_unit(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-output-unit vector against a weight (out x ...)."""
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def _rescale_layer(info: LayerInfo, inputs: Tensor) -> tuple[float, float]:
    """Rescale one layer so its output on ``inputs`` is (0, 1) per unit; returns the old (mean, std)."""
    layer = info.module
    mean, std = _unit_stats(layer, layer(inputs))
    live = std > DEAD_STD
    scale = torch.where(live, 1.0 / std.clamp_min(DEAD_STD), torch.ones_like(std))
    layer.weight.mul_(_per_unit(scale, layer.weight))
    if layer.bias is not None:
        layer.bias.sub_(mean.to(layer.bias.dtype)).mul_(scale.to(layer.bias.dtype))
        new_mean = torch.zeros_like(mean)
    else:
        new_mean = mean * scale
    new_var = (std * scale) ** 2
    # Running stats = the statistics the layer now produces on this batch (0 and 1 for every live
    # unit with a bias), so eval-mode forward passes match batch-statistics ones.
    for bn in info.norms:
        if bn.running_mean is not None:
            bn.running_mean.copy_(new_mean)
            bn.running_var.copy_(torch.where(live, new_var, torch.ones_like(new_var)))
    return mean.mean().item(), std.mean().item()


def _layerwise(trunk: nn.Module, images: Tensor,
               prepare: Callable[[int, LayerInfo, Tensor], None] | None = None) -> dict[str, tuple[float, float]]:
    """Layer by layer: capture the input (through the already-done layers), ``prepare``, rescale."""
    images = images.to(_device_of(trunk))
    stats: dict[str, tuple[float, float]] = {}
    with _preserved_modes(trunk), torch.no_grad():
        trunk.eval()
        layers = find_layers(trunk, images)
        for i, info in enumerate(layers):
            inputs = _layer_input(trunk, images, info.module)
            if prepare is not None:
                prepare(i, info, inputs)
            stats[info.name] = _rescale_layer(info, inputs)
    return stats


def rescale_units(trunk: nn.Module, images: Tensor) -> dict[str, tuple[float, float]]:
    """Krähenbühl's per-unit rescaling (beta = 0), layer by layer in execution order, in place.

    For each Conv2d / Linear layer, its pre-activation output on ``images`` is measured per output
    unit (channel; over N, H, W) *after* the earlier layers were rescaled, and
    ``W <- W / std``, ``b <- (b - mean) / std``: the output then has zero mean and unit variance per
    unit on this batch. Filter directions are kept, which is what makes this usable on pretrained
    weights. Units with std below ``DEAD_STD`` keep their scale (only the mean is removed). Batch
    norms reading a layer's output get running stats (0, 1) so that eval mode agrees with train mode.
    Runs in eval mode without gradients; each module's train/eval mode is restored.

    Args:
        trunk: any module whose ``forward(x)`` runs the layers.
        images: N x C x H x W network input, already normalised. The whole batch is run at once.
    Returns:
        layer name -> (mean over units of the unit means, mean over units of the unit stds),
        measured before that layer was rescaled.
    """
    return _layerwise(trunk, images)


# ----------------------------------------------------------------------------------- k-means


def layer_patches(layer: nn.Module, inputs: Tensor, max_patches: int, generator: torch.Generator,
                  group: int = 0, chunk: int = 16) -> Tensor:
    """Random centred, unit-norm input patches of a layer, shaped like its flattened filters.

    Args:
        layer: Conv2d (patches via ``F.unfold`` with its kernel/stride/padding/dilation, from the
            input channels of ``group``) or Linear (patches = input vectors).
        inputs: the layer's input, N x C x H x W (conv) or ... x in_features (linear).
        max_patches: at most this many, drawn uniformly without replacement.
        generator: CPU generator for the draw.
        group: which channel group of a grouped convolution.
        chunk: images unfolded at once (bounds memory on large maps).
    Returns:
        P x D, D = in_channels/groups * kh * kw (conv) or in_features; patches whose centred norm
        is ~0 (e.g. all-zero after a ReLU, or constant) are dropped, so P may be below max_patches.
    """
    if isinstance(layer, nn.Conv2d):
        cg = inputs.shape[1] // layer.groups
        x = inputs[:, group * cg:(group + 1) * cg]
        # Non-numeric padding ("same") or non-zero padding modes: use valid patches only.
        padding = layer.padding if (isinstance(layer.padding, tuple) and layer.padding_mode == "zeros") else 0
        geom = dict(kernel_size=layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
        per_image = F.unfold(x[:1], **geom).shape[2]
        total = x.shape[0] * per_image
        pick = torch.randperm(total, generator=generator)[:max_patches].sort().values
        parts = []
        for start in range(0, x.shape[0], chunk):
            lo, hi = start * per_image, min(start + chunk, x.shape[0]) * per_image
            sel = pick[(pick >= lo) & (pick < hi)] - lo
            if len(sel):
                cols = F.unfold(x[start:start + chunk], **geom)          # n x D x L
                cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])   # n*L x D, image-major
                parts.append(cols[sel.to(cols.device)])
        patches = torch.cat(parts) if parts else x.new_zeros(0, cg * math.prod(layer.kernel_size))
    else:
        flat = inputs.reshape(-1, inputs.shape[-1])
        pick = torch.randperm(flat.shape[0], generator=generator)[:max_patches]
        patches = flat[pick.to(flat.device)]
    patches = patches.float()
    # Centring removes the patch's DC level: centroids then have zero sum and respond to structure.
    patches = patches - patches.mean(dim=1, keepdim=True)
    norms = patches.norm(dim=1)
    keep = norms > 1e-6 * norms.max() if len(norms) else norms.bool()
    keep &= norms > 0
    return patches[keep] / norms[keep, None]


def spherical_kmeans(x: Tensor, k: int, iters: int = 10,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Spherical k-means: unit-norm centroids, assignment by largest cosine.

    Args:
        x: P x D unit-norm points.
        k: number of centroids.
        iters: Lloyd iterations.
        generator: CPU generator (initialisation = k distinct random points; random unit Gaussian
            directions when there are fewer than k points).
    Returns:
        centroids k x D (unit norm), assignment P (long). Empty clusters keep their centroid.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    p, d = x.shape
    init = [x[torch.randperm(p, generator=generator)[:k].to(x.device)]]
    if p < k:
        init.append(F.normalize(torch.randn(k - p, d, generator=generator), dim=1).to(x))
    centroids = torch.cat(init)
    assign = torch.zeros(p, dtype=torch.long, device=x.device)
    for _ in range(iters):
        if p == 0:
            break
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        norms = sums.norm(dim=1, keepdim=True)
        filled = norms.squeeze(1) > 1e-12
        centroids = torch.where(filled[:, None], sums / norms.clamp_min(1e-12), centroids)
    if p:
        assign = (x @ centroids.T).argmax(dim=1)
    return centroids, assign


def kmeans_filters(layer: nn.Module, inputs: Tensor, iters: int = 10, max_patches: int = 20000,
                   seed: int = 0) -> Tensor:
    """Filters for ``layer`` from spherical k-means on patches of its input (not written to it).

    For grouped convolutions, k-means runs per group on that group's input channels with
    k = output channels of the group.

    Args:
        layer: Conv2d or Linear.
        inputs: its input, N x C x H x W (conv) or ... x in_features (linear).
        iters, max_patches: k-means iterations; patches per group (speed cap).
        seed: makes the result deterministic.
    Returns:
        unit-norm filters shaped like ``layer.weight`` (out x in/groups x kh x kw or out x in).
    """
    generator = torch.Generator().manual_seed(seed)
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    weight = layer.weight
    per_group = weight.shape[0] // groups
    out = torch.empty_like(weight)
    for g in range(groups):
        patches = layer_patches(layer, inputs, max_patches, generator, group=g)
        if patches.shape[1] != math.prod(weight.shape[1:]):
            raise ValueError(f"patch size {patches.shape[1]} does not match filters {tuple(weight.shape)}")
        filters = whitened_kmeans(patches, per_group, iters, generator)
        out[g * per_group:(g + 1) * per_group] = filters.view(per_group, *weight.shape[1:]).to(weight)
    return out


def whitened_kmeans(patches: Tensor, k: int, iters: int = 10,
                    generator: torch.Generator | None = None, eps: float = 1e-2) -> Tensor:
    """k filters from spherical k-means in PCA-whitened patch space, as Krähenbühl's release does.

    Without whitening the few high-variance (low-frequency) directions dominate every centroid and
    the filters come out nearly alike (measured: a k-means RGB trunk probed 17% at conv3 on the
    synthetic set vs 27% for rescaled Gaussian filters). Whitening keeps the top-k principal
    components, scales each to unit variance, clusters there, and maps the centroids back
    (filter = centroid . S . V^T), so filter responses are correlations in the whitened space.

    Args:
        patches: P x D patch vectors (P >= 1).
        k: number of filters.
        eps: added to the eigenvalues, relative to their mean (keeps noise directions in check).
    Returns:
        k x D unit-norm filters.
    """
    x = patches.double() - patches.double().mean(dim=0, keepdim=True)
    cov = x.T @ x / max(x.shape[0], 1)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals.argsort(descending=True)[:k]
    evals, evecs = evals[keep].clamp_min(0), evecs[:, keep]
    live = evals > 1e-9 * evals.max().clamp_min(1e-30)
    scale = torch.where(live, 1.0 / torch.sqrt(evals + eps * evals[live].mean()), torch.zeros_like(evals))
    whitened = F.normalize(x @ (evecs * scale), dim=1)
    centroids, _ = spherical_kmeans(whitened.float(), k, iters, generator)
    filters = centroids.double() @ (evecs * scale).T
    return F.normalize(filters, dim=1).float()


# ------------------------------------------------------------------------------- calibration


def gradient_ratios(trunk: nn.Module, images: Tensor, draws: int = 4, seed: int = 0) -> dict[str, float]:
    """Krähenbühl's C_k = E_z[||dL/dW_k||^2] / ||W_k||^2 with random gradients at the top.

    L = sum(output * z), z ~ N(0, 1) of the output's shape, averaged over ``draws`` draws of z (one
    forward pass; the gradient is linear in z). The trunk runs in train mode (batch norm on batch
    statistics); modules' modes, buffers (running stats) and ``requires_grad`` flags are restored,
    and no ``.grad`` is left on the parameters. Layers the output does not depend on are omitted.

    Args:
        trunk: any module; its output a tensor (or dict / sequence of tensors).
        images: N x C x H x W network input.
    Returns:
        layer name -> C_k.
    """
    device = _device_of(trunk)
    images = images.to(device)
    layers = find_layers(trunk, images)
    weights = [info.module.weight for info in layers]
    flags = [w.requires_grad for w in weights]
    buffers = [(b, b.detach().clone()) for b in trunk.buffers()]
    generator = torch.Generator().manual_seed(seed)
    sq = [0.0] * len(layers)
    used = [True] * len(layers)
    try:
        with _preserved_modes(trunk), torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)  # dropout etc. in train mode
            for w in weights:
                w.requires_grad_(True)
            trunk.train()
            outs = _output_tensors(trunk(images))
            for i in range(draws):
                loss = sum((o * torch.randn(o.shape, generator=generator).to(o)).sum() for o in outs)
                grads = torch.autograd.grad(loss, weights, retain_graph=i < draws - 1, allow_unused=True)
                for j, g in enumerate(grads):
                    if g is None:
                        used[j] = False
                    else:
                        sq[j] += g.double().pow(2).sum().item()
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return {info.name: sq[j] / draws / max(info.module.weight.detach().double().pow(2).sum().item(), 1e-300)
            for j, info in enumerate(layers) if used[j]}


def calibrate_layers(trunk: nn.Module, images: Tensor, iterations: int = 3, draws: int = 4,
                     seed: int = 0) -> dict[str, float]:
    """Scale whole layers so that all have the same gradient ratio C_k ("learn at the same rate").

    Each iteration measures C_k (``gradient_ratios``, seed + iteration) and multiplies layer k's
    weight and bias by zeta_k = (C_k / Cbar)^(1/4), Cbar the geometric mean of the C_k. Why 1/4:
    when batch norm follows a layer, the net is invariant to its scale, so W_k -> zeta W_k divides
    dL/dW_k by zeta and C_k by zeta^4, others unchanged. In a ReLU net without batch norm, scaling
    layer k (weight and bias) scales its output by zeta: C_k goes as zeta^-2 while every other
    layer's C_j goes as zeta^2, i.e. again zeta^-4 relative, and since prod(zeta) = 1 the
    geometric mean is kept. With batch norm after every layer one iteration equalises exactly;
    without, the un-scaled biases of later layers break exact homogeneity, hence the iterations.

    Running stats of batch norms reading a layer are scaled along (mean by zeta, var by zeta^2),
    so eval-mode outputs of a batch-norm trunk do not change. In a trunk without batch norm the
    per-unit output statistics are no longer (0, 1) afterwards; that is the method (the
    calibrated scale is what it is).

    Returns:
        layer name -> total scale factor applied (product over iterations).
    """
    images = images.to(_device_of(trunk))
    layers = find_layers(trunk, images)
    total = {info.name: 1.0 for info in layers}
    for it in range(iterations):
        ratios = gradient_ratios(trunk, images, draws=draws, seed=seed + it)
        valid = {k: v for k, v in ratios.items() if v > 0 and math.isfinite(v)}
        if len(valid) < 2:
            break
        log_mean = sum(math.log(v) for v in valid.values()) / len(valid)
        with torch.no_grad():
            for info in layers:
                if info.name not in valid:
                    continue
                zeta = math.exp((math.log(valid[info.name]) - log_mean) / 4)
                info.module.weight.mul_(zeta)
                if info.module.bias is not None:
                    info.module.bias.mul_(zeta)
                for bn in info.norms:
                    if bn.running_mean is not None:
                        bn.running_mean.mul_(zeta)
                        bn.running_var.mul_(zeta ** 2)
                total[info.name] *= zeta
    return total


# ------------------------------------------------------------------------------------ driver


def kraehenbuehl_init(trunk: nn.Module, images: Tensor, kmeans: bool = False, calibrate: bool = True,
                      kmeans_iters: int = 10, max_patches: int = 20000, calibration_iterations: int = 3,
                      draws: int = 4, seed: int = 0) -> dict[str, Any]:
    """Krähenbühl et al. (2016) data-dependent init of ``trunk``, in place. Uses no labels.

    Layer by layer in execution order: with ``kmeans``, the weights become spherical k-means
    centroids of patches of the layer's input, computed on the data propagated through the
    already initialised (k-means + rescaled) earlier layers (else the current Gaussian weights
    stay); then the layer is rescaled per unit (``rescale_units``). Finally, with ``calibrate``,
    ``calibrate_layers``. Deterministic given ``seed``.

    Args:
        images: N x C x H x W network input, already normalised.
    Returns:
        {"layers": names in order, "kmeans": bool, "unit_stats": name -> (mean, std) before
        rescaling, "calibration_scales": name -> zeta (only when calibrating)}.
    """
    def prepare(i: int, info: LayerInfo, inputs: Tensor) -> None:
        info.module.weight.copy_(kmeans_filters(info.module, inputs, kmeans_iters, max_patches, seed + 1009 * i))
        if info.module.bias is not None:
            info.module.bias.zero_()

    stats = _layerwise(trunk, images, prepare if kmeans else None)
    report: dict[str, Any] = {"layers": list(stats), "kmeans": kmeans, "unit_stats": stats}
    if calibrate:
        report["calibration_scales"] = calibrate_layers(trunk, images, calibration_iterations, draws, seed)
    return report


def apply_init(trunk: nn.Module, initialiser: Any, images: Callable[[int], Tensor]) -> dict[str, Any]:
    """Apply an ``init`` group object to ``trunk`` and return a short report.

    Gaussian keeps the trunk's own init; data-dependent inits (``num_images`` > 0) get
    ``images(n)``: the first n real images, uint8 n x 3 x H x W, fed as the trunk's input space.
    Used by pretraining, the probe harness and fine-tuning alike.
    """
    from ssl_bench.models.inputs import trunk_input
    if initialiser is None or not getattr(initialiser, "num_images", 0):
        return {"name": getattr(initialiser, "name", "gaussian")}
    report = initialiser(trunk, trunk_input(images(initialiser.num_images), trunk.input_space))
    return {"name": initialiser.name, **{k: v for k, v in report.items() if isinstance(v, (int, float, str))}}


class KraehenbuehlInit:
    """Hydra-instantiable Krähenbühl init (a plain class: Hydra would convert dataclass kwargs)."""

    name = "kraehenbuehl"

    def __init__(self, kmeans: bool = True, calibrate: bool = True, num_images: int = 256,
                 kmeans_iters: int = 10, max_patches: int = 20000, seed: int = 0) -> None:
        self.kmeans, self.calibrate, self.num_images = kmeans, calibrate, num_images
        self.kmeans_iters, self.max_patches, self.seed = kmeans_iters, max_patches, seed

    def __call__(self, trunk: nn.Module, images: Tensor) -> dict[str, Any]:
        """Initialise ``trunk`` in place from at most ``num_images`` of ``images`` (N x C x H x W)."""
        return kraehenbuehl_init(trunk, images[: self.num_images], kmeans=self.kmeans,
                                 calibrate=self.calibrate, kmeans_iters=self.kmeans_iters,
                                 max_patches=self.max_patches, seed=self.seed)

    def __repr__(self) -> str:
        return (f"KraehenbuehlInit(kmeans={self.kmeans}, calibrate={self.calibrate}, num_images={self.num_images}, "
                f"kmeans_iters={self.kmeans_iters}, max_patches={self.max_patches}, seed={self.seed})")


class GaussianInit:
    """Hydra-instantiable no-op: the trunk keeps its own Gaussian init."""

    name = "gaussian"

    def __call__(self, trunk: nn.Module, images: Tensor) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "GaussianInit()"
