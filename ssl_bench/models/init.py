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

Two of the colorization authors' uses are here as well: `run_init` / `RunInit`, their pretraining
init (train_alexnet/run_init.sh: k-means and per-unit rescaling of conv1..conv5 only, Gaussian
fc6/fc7, a zero fc8), and `calibrate_gradient_ratios`, magic_init's calibration of trained weights
on a random 1000-way top, which they run on the batch-norm-absorbed model before fine-tuning
(`ssl_bench.models.prepare`; docs/protocols.md, "Weight preparation for transfer").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_bench.errors import ConfigError
from ssl_bench.models.layers import CONV_LAYERS

__all__ = [
    "TOP_NAME", "GaussianInit", "KraehenbuehlInit", "LayerInfo", "RunInit", "calibrate_gradient_ratios",
    "calibrate_layers", "find_layers", "gradient_ratios", "kmeans_filters", "kraehenbuehl_init", "layer_patches",
    "rescale_units", "run_init", "spherical_kmeans", "top_gradient_ratios",
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
def _rescale_layer(info: LayerInfo, inputs: Tensor, beta: float = 0.0) -> tuple[float, float]:
    """Rescale one layer so its output on ``inputs`` is (beta, 1) per unit; returns the old (mean, std)."""
    layer = info.module
    mean, std = _unit_stats(layer, layer(inputs))
    live = std > DEAD_STD
    scale = torch.where(live, 1.0 / std.clamp_min(DEAD_STD), torch.ones_like(std))
    layer.weight.mul_(_per_unit(scale, layer.weight))
    if layer.bias is not None:
        layer.bias.sub_(mean.to(layer.bias.dtype)).mul_(scale.to(layer.bias.dtype)).add_(beta)
        new_mean = torch.full_like(mean, beta)
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


def _selected(info: LayerInfo, names: Collection[str] | None) -> bool:
    """Whether ``info`` is one of ``names``: its module name or the block it sits in ("conv1" = "conv1.0")."""
    return names is None or any(info.name == n or info.name.startswith(n + ".") for n in names)


def _check_names(layers: list[LayerInfo], names: Collection[str] | None, key: str) -> None:
    unknown = [n for n in names or () if not any(_selected(info, [n]) for info in layers)]
    if unknown:
        raise ConfigError(f"{key}: unknown layer(s) {unknown}; the trunk's layers are {[i.name for i in layers]}")


def _layerwise(trunk: nn.Module, images: Tensor,
               prepare: Callable[[int, LayerInfo, Tensor], None] | None = None, beta: float = 0.0,
               names: Collection[str] | None = None) -> dict[str, tuple[float, float]]:
    """Layer by layer: capture the input (through the already-done layers), ``prepare``, rescale.
    With ``names``, only those layers (in execution order); the others are left as they are."""
    images = images.to(_device_of(trunk))
    stats: dict[str, tuple[float, float]] = {}
    with _preserved_modes(trunk), torch.no_grad():
        trunk.eval()
        layers = find_layers(trunk, images)
        _check_names(layers, names, "layers")
        for i, info in enumerate(layers):
            if not _selected(info, names):
                continue
            inputs = _layer_input(trunk, images, info.module)
            if prepare is not None:
                prepare(i, info, inputs)
            stats[info.name] = _rescale_layer(info, inputs, beta)
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

# The throw-away top of Krähenbühl's calibration net (colorization train_alexnet/train_val_nobn_rs.prototxt,
# layer fc8_): a 1x1 convolution to 1000 channels, weights N(0, 0.01^2), bias 1.
TOP_CHANNELS, TOP_STD, TOP_BIAS = 1000, 0.01, 1.0
TOP_NAME = "top"


@contextmanager
def _kept_buffers(net: nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics) after a train-mode forward pass."""
    saved = [(b, b.detach().clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _mean_channel_std(out: Tensor) -> float:
    """Mean over channels (dim 1) of each channel's population std over all other dims."""
    flat = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
    return flat.std(dim=1, correction=0).mean().item()


def _measure(net: nn.Module, images: Tensor, draws: int, seed: int,
             train: bool) -> tuple[dict[str, float], float]:
    """(layer name -> C_k, mean channel std of the first output) with random gradients at the output."""
    device = _device_of(net)
    images = images.to(device)
    layers = find_layers(net, images)
    weights = [info.module.weight for info in layers]
    flags = [w.requires_grad for w in weights]
    generator = torch.Generator().manual_seed(seed)
    sq = [0.0] * len(layers)
    used = [True] * len(layers)
    try:
        with _preserved_modes(net), _kept_buffers(net), torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)  # dropout etc. in train mode
            for w in weights:
                w.requires_grad_(True)
            net.train(train)
            outs = _output_tensors(net(images))
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
    ratios = {info.name: sq[j] / draws / max(info.module.weight.detach().double().pow(2).sum().item(), 1e-300)
              for j, info in enumerate(layers) if used[j]}
    return ratios, _mean_channel_std(outs[0]) if outs[0].dim() >= 2 else 0.0


def gradient_ratios(trunk: nn.Module, images: Tensor, draws: int = 4, seed: int = 0,
                    train: bool = True) -> dict[str, float]:
    """Krähenbühl's C_k = E_z[||dL/dW_k||^2] / ||W_k||^2 with random gradients at the top.

    L = sum(output * z), z ~ N(0, 1) of the output's shape, averaged over ``draws`` draws of z (one
    forward pass; the gradient is linear in z). The trunk runs in train mode (batch norm on batch
    statistics; ``train=False``: eval mode, e.g. no dropout); modules' modes, buffers (running stats)
    and ``requires_grad`` flags are restored, and no ``.grad`` is left on the parameters. Layers the
    output does not depend on are omitted. (magic_init's ratio is sqrt(C_k).)

    Args:
        trunk: any module; its output a tensor (or dict / sequence of tensors).
        images: N x C x H x W network input.
    Returns:
        layer name -> C_k.
    """
    return _measure(trunk, images, draws, seed, train)[0]


@torch.no_grad()
def _scale_layers(net: nn.Module, layers: list[LayerInfo], images: Tensor, scales: dict[str, float],
                  input_scale: dict[str, float], train: bool, seed: int) -> None:
    """One forward pass that multiplies each layer's weight by ``scales[name]`` and its bias by that
    times the change of the layer's mean |input| since the last pass (recorded in ``input_scale``).

    The bias factor is magic_init's: in a ReLU / max-pool net without batch norm, scaling layer j by
    s_j then scales every later layer's input by the product of the s_j below it, and the bias must
    follow for the net to stay positively homogeneous (C_k then obeys the exact scaling law). The
    hooks act at each layer's first call, so the measured input already reflects the layers below.
    Batch norms reading a layer get their running statistics scaled by the layer's output factor.
    """
    by_module = {info.module: info for info in layers}
    factors: dict[str, float] = {}

    def hook(module: nn.Module, inp: tuple) -> None:
        info = by_module[module]
        if info.name in factors:
            return
        current = inp[0].detach().abs().double().mean().item()
        previous = input_scale.get(info.name, 0.0)
        adj = current / previous if previous > 0 and current > 0 else 1.0
        input_scale[info.name] = current
        s = scales.get(info.name, 1.0)
        module.weight.mul_(s)
        if module.bias is not None:
            module.bias.mul_(s * adj)
        factors[info.name] = s * adj

    handles = [info.module.register_forward_pre_hook(hook) for info in layers]
    try:
        with _preserved_modes(net), _kept_buffers(net), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net.train(train)
            net(images)
    finally:
        for h in handles:
            h.remove()
    for info in layers:
        f = factors.get(info.name, 1.0)
        for bn in info.norms:
            if bn.running_mean is not None:
                bn.running_mean.mul_(f)
                bn.running_var.mul_(f ** 2)


def _converged(rho: dict[str, float], log_target: float, tolerance: float) -> bool:
    """magic_init's stop test: every |log(rho_k) / log(target) - 1| below ``tolerance``."""
    return log_target != 0 and all(abs(math.log(r) / log_target - 1) < tolerance for r in rho.values())


def _calibrate(net: nn.Module, images: Tensor, iterations: int, draws: int, seed: int, train: bool,
               tolerance: float | None = None, output_std: bool = False) -> dict[str, Any]:
    """Rounds of: measure rho_k = sqrt(C_k), target = geometric mean (times output std^(1/n) with
    ``output_std``, as magic_init), stop if converged (``tolerance``), scale layer k by
    sqrt(rho_k / target). Returns {"rounds": updates made, "scales": name -> total weight factor}."""
    images = images.to(_device_of(net))
    layers = find_layers(net, images)
    total = {info.name: 1.0 for info in layers}
    input_scale: dict[str, float] = {}
    _scale_layers(net, layers, images, {}, input_scale, train, seed)  # records the input scales
    rounds = 0
    for it in range(iterations):
        ratios, out_std = _measure(net, images, draws, seed + it, train)
        rho = {k: math.sqrt(v) for k, v in ratios.items() if v > 0 and math.isfinite(v)}
        if len(rho) < 2:
            break
        log_target = sum(math.log(r) for r in rho.values()) / len(rho)
        if output_std and out_std > 0:
            log_target += math.log(out_std) / len(rho)
        if tolerance is not None and _converged(rho, log_target, tolerance):
            break
        scales = {k: math.exp((math.log(r) - log_target) / 2) for k, r in rho.items()}
        _scale_layers(net, layers, images, scales, input_scale, train, seed + it)
        for k, s in scales.items():
            total[k] *= s
        rounds += 1
    return {"rounds": rounds, "scales": total}


def calibrate_layers(trunk: nn.Module, images: Tensor, iterations: int = 3, draws: int = 4,
                     seed: int = 0) -> dict[str, float]:
    """Scale whole layers so that all have the same gradient ratio C_k ("learn at the same rate").

    Each iteration measures C_k (``gradient_ratios`` in train mode, seed + iteration) and multiplies
    layer k's weight by zeta_k = (C_k / Cbar)^(1/4), Cbar the geometric mean of the C_k, and its bias
    by zeta_k times the change of its input's scale (see `_scale_layers`). Why 1/4: when batch norm
    follows a layer, the net is invariant to its scale, so W_k -> zeta W_k divides dL/dW_k by zeta
    and C_k by zeta^4, others unchanged. In a ReLU net without batch norm, with the biases following
    the input scale, scaling layer k scales every later output by zeta: C_k goes as zeta^-2 while
    every other layer's C_j goes as zeta^2, i.e. again zeta^-4 relative, and since prod(zeta) = 1
    the geometric mean is kept. Either way one iteration equalises the draws it measured; more
    iterations average over draws of the random gradients.

    Running stats of batch norms reading a layer are scaled along (mean by the output factor, var by
    its square), so eval-mode outputs of a batch-norm trunk do not change. In a trunk without batch
    norm the per-unit output statistics are no longer (0, 1) afterwards; that is the method.

    Returns:
        layer name -> total weight factor applied (product over iterations).
    """
    return _calibrate(trunk, images, iterations, draws, seed, train=True)["scales"]


class _WithTop(nn.Module):
    """A trunk followed by a throw-away layer on its (first) output."""

    def __init__(self, trunk: nn.Module, top: nn.Module) -> None:
        super().__init__()
        self.trunk, self.top = trunk, top

    def forward(self, x: Tensor) -> Tensor:
        return self.top(_output_tensors(self.trunk(x))[0])


def _with_random_top(trunk: nn.Module, images: Tensor, channels: int, std: float, bias: float,
                     seed: int) -> _WithTop:
    """``trunk`` + a random 1x1 convolution (Linear for N x C outputs) with N(0, std^2) weights."""
    with torch.no_grad(), _preserved_modes(trunk):
        trunk.eval()
        out = _output_tensors(trunk(images[:1].to(_device_of(trunk))))[0]
    top: nn.Module = nn.Conv2d(out.shape[1], channels, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        top.weight.copy_(torch.randn(top.weight.shape, generator=generator) * std)
        top.bias.fill_(bias)
    return _WithTop(trunk, top.to(device=out.device, dtype=out.dtype))


def _trunk_names(values: dict[str, Any]) -> dict[str, Any]:
    """Names of the _WithTop net -> the trunk's own names (and TOP_NAME)."""
    return {k.removeprefix("trunk."): v for k, v in values.items()}


def top_gradient_ratios(trunk: nn.Module, images: Tensor, draws: int = 4, seed: int = 0,
                        channels: int = TOP_CHANNELS, std: float = TOP_STD, bias: float = TOP_BIAS) -> dict[str, float]:
    """C_k of every layer of ``trunk`` plus a random top (``TOP_NAME``), in eval mode.

    The measurement of `calibrate_gradient_ratios`: random Gaussian gradients at the output of a
    random ``channels``-way 1x1 layer on the trunk's output. Leaves ``trunk`` as it was.

    Args:
        images: N x C x H x W network input.
    Returns:
        layer name -> C_k = E||dL/dW_k||^2 / ||W_k||^2.
    """
    net = _with_random_top(trunk, images, channels, std, bias, seed)
    return _trunk_names(gradient_ratios(net, images, draws, seed, train=False))


def calibrate_gradient_ratios(trunk: nn.Module, images: Tensor, iterations: int = 10, draws: int = 1,
                              seed: int = 0, channels: int = TOP_CHANNELS, std: float = TOP_STD,
                              bias: float = TOP_BIAS, tolerance: float = 0.01) -> dict[str, Any]:
    """Krähenbühl's gradient-ratio calibration of trained weights (``magic_init.py -cs``), in place.

    As ``calibrateGradientRatio`` of philkr/magic_init, run by the colorization authors on the
    batch-norm-absorbed model before fine-tuning (docs/protocols.md, "Weight preparation for
    transfer"): a random ``channels``-way top (weights N(0, std^2), bias ``bias``) is put on the
    trunk's output; up to ``iterations`` rounds each draw random N(0, 1) gradients at the top's
    output (``draws`` per round; magic_init: 1), measure rho_k = sqrt(mean(dW_k^2) / mean(W_k^2))
    for every weight layer including the top, set target = geometric mean of the rho_k times
    (mean channel std of the top's output)^(1/n), stop when every |log rho_k / log target - 1| < ``tolerance``,
    else multiply layer k's weight by sqrt(rho_k / target) and its bias by the same times the change of
    its input's mean |value| (the scaling of the layers below). Runs in eval mode (no dropout, batch
    norm on running statistics: meant for absorbed trunks). The top is thrown away afterwards.

    Args:
        trunk: any module (e.g. an absorbed AlexNet, either geometry); modified in place.
        images: N x C x H x W network input (magic_init: one batch of 80 training crops).
    Returns:
        {"rounds": scaling rounds made, "scales": layer name -> total weight factor (trunk layers and
        ``TOP_NAME``)}.
    """
    net = _with_random_top(trunk, images, channels, std, bias, seed)
    report = _calibrate(net, images, iterations, draws, seed + 1, train=False, tolerance=tolerance,
                        output_std=True)
    return {"rounds": report["rounds"], "scales": _trunk_names(report["scales"])}


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
    prepare = _kmeans_step(kmeans_iters, max_patches, seed) if kmeans else None
    stats = _layerwise(trunk, images, prepare)
    report: dict[str, Any] = {"layers": list(stats), "kmeans": kmeans, "unit_stats": stats}
    if calibrate:
        report["calibration_scales"] = calibrate_layers(trunk, images, calibration_iterations, draws, seed)
    return report


def _kmeans_step(kmeans_iters: int, max_patches: int, seed: int) -> Callable[[int, LayerInfo, Tensor], None]:
    """The `_layerwise` step that sets a layer's filters to k-means centroids of its input patches."""
    def prepare(i: int, info: LayerInfo, inputs: Tensor) -> None:
        info.module.weight.copy_(kmeans_filters(info.module, inputs, kmeans_iters, max_patches, seed + 1009 * i))
        if info.module.bias is not None:
            info.module.bias.zero_()
    return prepare


@torch.no_grad()
def _gaussian_fill(trunk: nn.Module, images: Tensor, names: Collection[str], std: float, bias: float,
                   seed: int) -> list[str]:
    """Weights of the named layers <- N(0, std^2), biases <- ``bias`` (Caffe's gaussian / constant fillers)."""
    layers = find_layers(trunk, images)
    _check_names(layers, names, "gaussian_layers")
    generator = torch.Generator().manual_seed(seed)
    filled = []
    for info in layers:
        if _selected(info, names):
            w = info.module.weight
            w.copy_(torch.randn(w.shape, generator=generator).to(w) * std)
            if info.module.bias is not None:
                info.module.bias.fill_(bias)
            filled.append(info.name)
    return filled


def run_init(trunk: nn.Module, images: Tensor, layers: Collection[str] = CONV_LAYERS, kmeans: bool = True,
             bias: float = 0.1, gaussian_layers: Collection[str] = ("fc6", "fc7"), gaussian_std: float = 0.005,
             gaussian_bias: float = 1.0, kmeans_iters: int = 10, max_patches: int = 20000,
             seed: int = 0) -> dict[str, Any]:
    """The colorization authors' init (train_alexnet/run_init.sh), in place. Uses no labels.

    ``magic_init -t kmeans -nit 10`` on an init net that stops at relu5: ``layers`` (conv1..conv5) get
    k-means filters and per-unit rescaling layer by layer (as `kraehenbuehl_init` with
    ``kmeans=True``), the bias set so each unit's output mean is ``bias`` (magic_init's ``-b``,
    default 0.1, which run_init.sh leaves); no calibration. ``gaussian_layers`` (fc6, fc7) get their
    prototxt fillers: weights N(0, gaussian_std^2), bias ``gaussian_bias``. The head (fc8) is zeroed
    by `RunInit.init_head`. Batch norms reading a rescaled layer get running statistics (bias, 1), so
    eval mode removes the shift that batch statistics would remove too.

    Args:
        images: N x C x H x W network input (the authors: 10 batches of 80 training crops).
    Returns:
        {"layers": rescaled names, "kmeans": bool, "unit_stats": name -> (mean, std) before
        rescaling, "gaussian_layers": filled names}.
    """
    images = images.to(_device_of(trunk))
    prepare = _kmeans_step(kmeans_iters, max_patches, seed) if kmeans else None
    stats = _layerwise(trunk, images, prepare, beta=bias, names=layers)
    filled = _gaussian_fill(trunk, images, gaussian_layers, gaussian_std, gaussian_bias, seed + 1)
    return {"layers": list(stats), "kmeans": kmeans, "unit_stats": stats, "gaussian_layers": filled}


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


class RunInit:
    """Hydra-instantiable `run_init`: the colorization authors' init (conf/init/run_init.yaml).

    ``init_head(head)`` zeroes the pretext's output layer (``zero_head``): the authors' fc8 has no
    filler, i.e. Caffe's all-zero default, weights and bias. The pretraining run calls it on the
    pretext's ``head`` once the pretext module is built (the trunk's init cannot reach the head).
    """

    name = "run_init"

    def __init__(self, layers: Sequence[str] = CONV_LAYERS, kmeans: bool = True, bias: float = 0.1,
                 gaussian_layers: Sequence[str] = ("fc6", "fc7"), gaussian_std: float = 0.005,
                 gaussian_bias: float = 1.0, zero_head: bool = True, num_images: int = 800,
                 kmeans_iters: int = 10, max_patches: int = 20000, seed: int = 0) -> None:
        self.layers, self.gaussian_layers = tuple(layers), tuple(gaussian_layers)
        self.kmeans, self.bias, self.gaussian_std, self.gaussian_bias = kmeans, bias, gaussian_std, gaussian_bias
        self.zero_head, self.num_images = zero_head, num_images
        self.kmeans_iters, self.max_patches, self.seed = kmeans_iters, max_patches, seed

    def __call__(self, trunk: nn.Module, images: Tensor) -> dict[str, Any]:
        """Initialise ``trunk`` in place from at most ``num_images`` of ``images`` (N x C x H x W)."""
        return run_init(trunk, images[: self.num_images], self.layers, self.kmeans, self.bias,
                        self.gaussian_layers, self.gaussian_std, self.gaussian_bias, self.kmeans_iters,
                        self.max_patches, self.seed)

    @torch.no_grad()
    def init_head(self, head: nn.Module) -> None:
        """Zero the weight and bias of the output layer (the last Conv2d / Linear) of a pretext's
        ``head``, the fc8 analogue; nothing with ``zero_head=False``. Earlier layers of a deeper head
        keep their init (zeroing them all would stop every gradient)."""
        layers = [m for m in head.modules() if isinstance(m, LAYER_TYPES)]
        if self.zero_head and layers:
            for p in layers[-1].parameters():
                p.zero_()

    def __repr__(self) -> str:
        return (f"RunInit(layers={list(self.layers)}, kmeans={self.kmeans}, bias={self.bias}, "
                f"gaussian_layers={list(self.gaussian_layers)}, gaussian_std={self.gaussian_std}, "
                f"gaussian_bias={self.gaussian_bias}, zero_head={self.zero_head}, num_images={self.num_images}, "
                f"kmeans_iters={self.kmeans_iters}, max_patches={self.max_patches}, seed={self.seed})")


class GaussianInit:
    """Hydra-instantiable no-op: the trunk keeps its own Gaussian init."""

    name = "gaussian"

    def __call__(self, trunk: nn.Module, images: Tensor) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "GaussianInit()"
