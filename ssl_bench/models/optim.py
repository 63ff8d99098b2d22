"""Learning-rate schedules expressed as picklable factories (Hydra ``_partial_`` targets)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ssl_bench.errors import ConfigError


class PiecewiseConstant:
    """lr multiplier: values[i] on [boundaries[i-1], boundaries[i]). A class, not a lambda, so that
    schedulers survive checkpoint pickling.

    ``scale`` compresses the boundaries for shorter runs (the paper's schedule scaled to a run).
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float], scale: float = 1.0) -> None:
        if len(values) != len(boundaries) + 1:
            raise ConfigError(f"scheduler.values: expected {len(boundaries) + 1} values for "
                              f"{len(boundaries)} boundaries, got {len(values)}")
        self.boundaries = [int(round(b * scale)) for b in boundaries]
        self.values = list(values)

    def __call__(self, step: int) -> float:
        return self.values[bisect_right(self.boundaries, step)]


def piecewise_constant(optimizer: Optimizer, boundaries: Sequence[int], values: Sequence[float],
                       scale: float = 1.0) -> LambdaLR:
    """LambdaLR with multipliers ``values`` switching at iteration ``boundaries`` (x ``scale``)."""
    return LambdaLR(optimizer, PiecewiseConstant(boundaries, values, scale))


def caffe_bias_optimizers(opt: Any, scheduler_factory: Any, bias_lr_mult: float, bias_decay_mult: float) -> Any:
    """Lightning's ``configure_optimizers`` value for an optimiser built on [weights, biases]: the biases'
    lr and weight decay scaled as Caffe's second ``param`` block does (lr_mult / decay_mult), then the
    per-iteration scheduler from ``scheduler_factory`` (None: none), built after the scaling so its
    base lrs include the bias multiplier."""
    bias = opt.param_groups[1]
    bias["lr"] *= bias_lr_mult
    if "weight_decay" in bias:
        bias["weight_decay"] *= bias_decay_mult
    if scheduler_factory is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler_factory(opt), "interval": "step"}}
