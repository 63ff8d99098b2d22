"""The split-brain AlexNet (Zhang, Isola, Efros, CVPR 2017): two disjoint half-width AlexNets.

Every layer of the AlexNet is split by channels into two halves that never exchange information:
one half reads the lightness L, the other the colour channels ab. Pretraining makes each half
predict the other half's input (`ssl_bench.pretext.split_brain`); the representation is the two
halves' features concatenated layer by layer, so a probe sees the full AlexNet widths
(conv1..conv5, fc6, fc7) and the same layer names as every other trunk.

Input space "lab" (`ssl_bench.models.inputs.trunk_input`): N x 3 x H x W = (L - 50, a, b), the
Lab image the authors' deploy net takes (richzhang/splitbrainauto, README: input blob ``data_lab``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.layers import CONV_LAYERS

TARGET = "ssl_bench.models.split_brain.SplitBrainAlexNet"
# the attribute names of the two AlexNets, whose modules carry the layer names conv1..fc7
HALVES: tuple[str, ...] = ("l_half", "ab_half")


class SplitBrainAlexNet(nn.Module):
    """Two half-width AlexNets side by side: ``l_half`` on L - 50 (1 channel), ``ab_half`` on ab.

    Args (those of `ssl_bench.models.alexnet.AlexNet`, for the whole net):
        widths: channels of conv1..conv5 of the whole net (each even); each half has half of them.
        fc_channels: channels of fc6/fc7 of the whole net (even).
        fc6_kernel, fc6_dilation, batch_norm, geometry, lrn, dropout: as in AlexNet, for both halves.
        groups: the halves keep AlexNet's two-group convolutions in conv2, conv4, conv5.
        input_space: "lab" (the only input this trunk takes).
        in_channels: 3 or None.
    """

    def __init__(self, in_channels: int | None = None, widths: Sequence[int] = (96, 256, 384, 384, 256),
                 fc_channels: int = 4096, fc6_kernel: int = 6, fc6_dilation: int = 2, groups: bool = True,
                 batch_norm: bool = True, input_space: str = "lab", geometry: str = "train", lrn: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if input_space != "lab":
            raise ConfigError(f"backbone.input_space: the split-brain AlexNet reads Lab images, expected 'lab', "
                             f"got {input_space!r}")
        if in_channels not in (None, 3):
            raise ConfigError(f"backbone.in_channels: the split-brain AlexNet reads L and ab (3 channels), "
                             f"got {in_channels}")
        if len(widths) != 5 or any(int(w) % 2 for w in [*widths, fc_channels]):
            raise ConfigError(f"backbone.widths / backbone.fc_channels: expected 5 even conv widths and an even fc "
                             f"width (each half gets half), got {list(widths)} and {fc_channels}")
        self.config = {"_target_": TARGET, "in_channels": 3, "widths": [int(w) for w in widths],
                       "fc_channels": int(fc_channels), "fc6_kernel": fc6_kernel, "fc6_dilation": fc6_dilation,
                       "groups": groups, "batch_norm": batch_norm, "input_space": "lab", "geometry": geometry,
                       "lrn": lrn, "dropout": dropout}
        half = dict(widths=[int(w) // 2 for w in widths], fc_channels=int(fc_channels) // 2, fc6_kernel=fc6_kernel,
                    fc6_dilation=fc6_dilation, groups=groups, batch_norm=batch_norm, geometry=geometry, lrn=lrn,
                    dropout=dropout)
        self.l_half = AlexNet(in_channels=1, input_space="L", **half)
        # AlexNet knows only the L and rgb spaces; the ab half is fed by this class, never by trunk_input
        self.ab_half = AlexNet(in_channels=2, input_space="rgb", **half)
        self.in_channels, self.input_space, self.geometry = 3, "lab", geometry
        self.widths, self.fc_channels = tuple(int(w) for w in widths), int(fc_channels)

    @property
    def out_channels(self) -> int:
        return self.fc_channels

    @property
    def halves(self) -> tuple[AlexNet, AlexNet]:
        """(l_half, ab_half)."""
        return self.l_half, self.ab_half

    def half_features(self, x: Tensor, layers: Sequence[str] = CONV_LAYERS
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """x: N x 3 x H x W (L - 50, a, b) -> (L half's, ab half's) {layer: N x C/2 x h x w}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"split-brain AlexNet: expected N x 3 x H x W (L - 50, a, b), got {tuple(x.shape)}")
        return self.l_half.forward_features(x[:, :1], layers), self.ab_half.forward_features(x[:, 1:], layers)

    def forward_features(self, x: Tensor, layers: Sequence[str] = CONV_LAYERS) -> dict[str, Tensor]:
        """Named post-ReLU activations of the whole net: per layer the L half's channels, then the ab
        half's. x: N x 3 x H x W (L - 50, a, b) -> {layer: N x C x h x w}."""
        from_l, from_ab = self.half_features(x, layers)
        return {k: torch.cat([from_l[k], from_ab[k]], 1) for k in from_l}

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x H x W -> fc7 map N x fc_channels x h x w."""
        return self.forward_features(x, ("fc7",))["fc7"]


def split_brain_alexnet(**kwargs) -> SplitBrainAlexNet:
    """The split-brain AlexNet at the authors' widths (96-256-384-384-256, fc 4096)."""
    return SplitBrainAlexNet(**kwargs)


__all__ = ["HALVES", "SplitBrainAlexNet", "TARGET", "split_brain_alexnet"]
