"""Context prediction (Doersch, Gupta, Efros 2015): where does the second patch sit relative to the first?

Two patches from a 3 x 3 grid (the centre one and one of its eight neighbours) go through the same
trunk (shared weights) up to fc6; the two fc6 vectors are concatenated and an fc7-fc8-fc9 head
classifies the relative position into 8 classes. Against trivial shortcuts the patches are jittered
and separated by a gap (``patches.sample_patch_pairs``), their colour is reduced (chromatic
aberration: ``drop_color`` or ``project_color``) and a third of them are pixelated (``pixelate``).

Pairs are cut from the loader's uint8 crops on the accelerator, one pair per image, so a batch of
N images gives N pairs (2N trunk passes, run as one batch). Deviations from the paper (method notes):

* Doersch et al. resize whole images to 150k..450k pixels and cut 96 px patches with a 48 px gap
  (the defaults here); the pipeline hands over fixed-size crops, which must hold the jittered grid
  (``data.crop_size >= 3 patch + 2 gap + 2 jitter`` = 398 px with the defaults).
* Their fc6 is fully connected on the 6 x 6 pool5 map; our trunk's fc6 is a convolution, so its map
  is global-average-pooled to one vector per patch. This works for any patch size.
* Released code: ~1.7M iterations at lr 1e-5 with batches of 512 patches; set by the optimizer and
  trainer configs, not here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.io import atomic_writer
from ssl_bench.models.inputs import L_CENTER, RGB_MEAN, RGB_STD, trunk_input
from ssl_bench.pretext import common
from ssl_bench.pretext.common import SkipCounter
from ssl_bench.pretext.patches import NUM_POSITIONS, POSITIONS, drop_color, pixelate, project_color, sample_patch_pairs

COLOR_MODES: tuple[str, ...] = ("drop", "project", "none")
# Names of the 8 classes in the paper's 3x3 layout (1 2 3 / 4 _ 5 / 6 7 8).
POSITION_NAMES: tuple[str, ...] = ("1 up-left", "2 up", "3 up-right", "4 left", "5 right",
                                   "6 down-left", "7 down", "8 down-right")
_VAL_SEED = 20150507  # validation pairs: the same for every validation epoch (comparable numbers)


class ContextPredictionPretext(pl.LightningModule):
    """Siamese trunk up to fc6 (shared weights) -> concat -> fc7 -> fc8 -> fc9 (8-way softmax).

    Args:
        trunk: built backbone; ``input_space`` says how uint8 patches are fed ("rgb" as in the paper).
        optimizer, scheduler: partial factories (scheduler stepped per iteration, or None).
        input_space: "rgb" (or "L", only with ``color="none"``: L has no chromatic aberration to hide).
        patch_size, gap, jitter: patch side, pixels between patches, maximal shift per patch and axis.
        color: chromatic-aberration countermeasure: "drop" (keep one channel, noise in the others),
            "project" (remove the green-magenta component) or "none".
        pixelate_prob, pixelate_pixels: probability per patch of pixelation to about that many pixels.
        head_channels: width of fc7 and fc8 (4096 in the paper).
        channels_last: NHWC memory format for the convolutions.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, input_space: str = "rgb",
                 patch_size: int = 96, gap: int = 48, jitter: int = 7, color: str = "drop",
                 pixelate_prob: float = 1 / 3, pixelate_pixels: int = 100, head_channels: int = 4096,
                 channels_last: bool = True) -> None:
        super().__init__()
        if color not in COLOR_MODES:
            raise ConfigError(f"pretext.color: expected one of {list(COLOR_MODES)}, got {color!r}")
        if input_space not in ("L", "rgb"):
            raise ConfigError(f"pretext.input_space: expected 'L' or 'rgb', got {input_space!r}")
        common.check_trunk(trunk, input_space)
        if input_space == "L" and color != "none":
            raise ConfigError(f"pretext.color={color!r} needs three colour channels; with "
                              "pretext.input_space='L' set pretext.color=none")
        if patch_size < 1 or gap < 0 or jitter < 0:
            raise ConfigError(f"pretext.patch_size/gap/jitter: expected >= 1/0/0, got {patch_size}/{gap}/{jitter}")
        if not 0 <= pixelate_prob <= 1 or pixelate_pixels < 1:
            raise ConfigError(f"pretext.pixelate_prob must lie in [0, 1] and pretext.pixelate_pixels be >= 1, "
                              f"got {pixelate_prob} and {pixelate_pixels}")
        self.trunk, self.input_space, self.color = trunk, input_space, color
        self.patch_size, self.gap, self.jitter = patch_size, gap, jitter
        self.pixelate_prob, self.pixelate_pixels = pixelate_prob, pixelate_pixels
        fc = trunk.fc_channels
        self.head = nn.Sequential(  # fc7, fc8, fc9; batch norm without scale/shift as in the trunk
            nn.Linear(2 * fc, head_channels), nn.BatchNorm1d(head_channels, affine=False), nn.ReLU(inplace=True),
            nn.Linear(head_channels, head_channels), nn.BatchNorm1d(head_channels, affine=False),
            nn.ReLU(inplace=True),
            nn.Linear(head_channels, NUM_POSITIONS),
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.channels_last = channels_last
        self.register_buffer("confusion", torch.zeros(NUM_POSITIONS, NUM_POSITIONS, dtype=torch.long),
                             persistent=False)  # true x predicted, over one validation epoch
        self.last_confusion: Tensor | None = None  # the last finished validation epoch's, summed over ranks
        self.skips = SkipCounter()
        self._generator: torch.Generator | None = None
        self._val_generator: torch.Generator | None = None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------------ pairs

    def _train_generator(self, device: torch.device) -> torch.Generator:
        """The pair sampler's own stream, seeded once from the global RNG at first use (so runs are
        reproducible under ``pl.seed_everything``) and offset by the rank (different pairs per rank)."""
        if self._generator is None or self._generator.device != device:
            seed = int(torch.randint(0, 2**62, (1,)).item()) + self.global_rank
            self._generator = torch.Generator(device=device).manual_seed(seed)
        return self._generator

    def pairs(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 N x 3 x H x W -> (trunk inputs 2N x C x P x P: N first then N second patches, labels N).

        Countermeasures in order: colour (on the normalised float patches), then pixelation.
        """
        gen = generator if generator is not None else self._train_generator(images.device)
        first, second, labels, _ = sample_patch_pairs(images, self.patch_size, self.gap, self.jitter, gen)
        x = trunk_input(torch.cat([first, second]), self.input_space)
        if self.color == "drop":
            x = drop_color(x, gen)
        elif self.color == "project":
            x = project_color(x)
        x = pixelate(x, self.pixelate_prob, self.pixelate_pixels, gen)
        return x, labels

    def classify(self, x: Tensor) -> Tensor:
        """Trunk inputs 2N x C x P x P (first patches, then second) -> logits N x 8."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fc6 = self.trunk.forward_features(x, ("fc6",))["fc6"].mean(dim=(2, 3))  # 2N x fc
        first, second = fc6.chunk(2)
        return self.head(torch.cat([first, second], dim=1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 N x 3 x H x W -> (logits N x 8, position labels int64 N) for freshly sampled pairs."""
        x, labels = self.pairs(images)
        return self.classify(x), labels

    # --------------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        x, labels = self.pairs(images)
        logits = self.classify(x)
        loss = F.cross_entropy(logits.float(), labels)
        common.check_finite(loss, self.global_step)
        n = labels.shape[0]
        self.log("pretrain/loss", loss, prog_bar=True, batch_size=n)
        self.log("pretrain/acc", (logits.argmax(1) == labels).float().mean(), batch_size=n)
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": loss, "samples": (x, labels)}

    def on_validation_epoch_start(self) -> None:
        self.confusion.zero_()
        self._val_generator = torch.Generator(device=self.device).manual_seed(_VAL_SEED + self.global_rank)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = common.batch_images(self, batch)
        if images is None:
            return
        if self._val_generator is None:  # validate() called without the epoch-start hook
            self.on_validation_epoch_start()
        x, labels = self.pairs(images, self._val_generator)
        logits = self.classify(x)
        pred = logits.argmax(1)
        n = labels.shape[0]
        self.log("pretrain/val_loss", F.cross_entropy(logits.float(), labels), batch_size=n, sync_dist=True)
        self.log("pretrain/val_acc", (pred == labels).float().mean(), batch_size=n, sync_dist=True)
        self.confusion += position_confusion(labels, pred)

    def on_validation_epoch_end(self) -> None:
        self._val_generator = None
        if self._trainer is None:
            return
        total = self.trainer.strategy.reduce(self.confusion.clone(), reduce_op="sum")  # every rank calls it
        if self.trainer.sanity_checking:
            return
        self.last_confusion = total.long().cpu()
        if self.global_rank != 0:
            return
        root = common.samples_dir(self)
        if root is None:
            return
        path = write_confusion(total.long().cpu(), root / f"position_confusion_epoch_{self.current_epoch:03d}")
        common.log_image(self, "pretrain/position_confusion", path)

    # ---------------------------------------------------------------------------------- samples

    def _display(self, x: Tensor) -> Tensor:
        """Trunk inputs B x C x P x P -> sRGB B x 3 x P x P in [0, 1]."""
        x = x.detach().float()
        if self.input_space == "L":
            return ((x + L_CENTER) / 100.0).clamp(0, 1).expand(-1, 3, -1, -1)
        mean = torch.tensor(RGB_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(RGB_STD, device=x.device).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def save_samples(self, x: Tensor, labels: Tensor, tag: str, count: int = 8) -> Path | None:
        """Example pairs as seen by the network: each on a 3x3 layout (first in the centre, second
        at its true position, the other cells light grey), written to samples/<tag>.png."""
        root = common.samples_dir(self)
        if root is None:
            return None
        n = labels.shape[0]
        k = min(count, n)
        first, second = self._display(x[:k]), self._display(x[n:n + k])
        p = self.patch_size
        sep = max(2, p // 8)
        step = p + sep
        canvas = torch.full((k, 3, 3 * p + 2 * sep, 3 * p + 2 * sep), 0.85, device=first.device)
        canvas[:, :, step:step + p, step:step + p] = first
        for i, label in enumerate(labels[:k].tolist()):  # at most `count` pictures: not the data path
            r, c = (1 + d for d in POSITIONS[label])
            canvas[i, :, r * step:r * step + p, c * step:c * step + p] = second[i]
        path = common.save_grid(canvas, root / f"{tag}.png", ncol=4)
        common.log_image(self, "pretrain/samples", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """A few pairs (first | second on their 3x3 layout) of the given uint8 images -> samples/final.png."""
        if common.samples_dir(self) is None:
            return None
        gen = torch.Generator(device=images.device).manual_seed(_VAL_SEED)
        x, labels = self.pairs(images[:8], gen)
        return self.save_samples(x, labels, tag="final")

    # ----------------------------------------------------------------------------- bookkeeping

    def configure_optimizers(self) -> Any:
        return common.configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    @property
    def pretext_metrics(self) -> dict[str, Any]:
        """What results.json records beyond the logged scalars: the last validation epoch's relative-position
        confusion (counts, rows = true position, columns = predicted, in ``POSITION_NAMES`` order)."""
        if self.last_confusion is None:
            return {}
        return {"position_names": list(POSITION_NAMES), "position_confusion": self.last_confusion.tolist()}

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        """What any tool needs to rebuild and feed the trunk (stored in every checkpoint)."""
        return common.trunk_meta(self.trunk, "context_prediction", self.color, patch_size=self.patch_size,
                                 gap=self.gap, jitter=self.jitter)


def position_confusion(labels: Tensor, pred: Tensor) -> Tensor:
    """True and predicted positions (int64 N each, in 0..7) -> counts int64 8 x 8 (rows = true)."""
    flat = torch.bincount(labels * NUM_POSITIONS + pred, minlength=NUM_POSITIONS ** 2)
    return flat.view(NUM_POSITIONS, NUM_POSITIONS)


def write_confusion(matrix: Tensor, stem: Path) -> Path:
    """8 x 8 position confusion (true x predicted counts) -> <stem>.csv and <stem>.png; the PNG path.

    Plotted with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stem.parent.mkdir(parents=True, exist_ok=True)
    counts = matrix.tolist()
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *POSITION_NAMES])
        writer.writerows([name, *row] for name, row in zip(POSITION_NAMES, counts))

    fig = Figure(figsize=(7.5, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = matrix.float().sum(1, keepdim=True).clamp_min(1)
    im = ax.imshow((matrix.float() / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true position")
    for i, row in enumerate(counts):
        for j, v in enumerate(row):
            dark = v / rows[i, 0].item() > 0.5
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(NUM_POSITIONS), POSITION_NAMES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(NUM_POSITIONS), POSITION_NAMES, fontsize=8)
    ax.set_xlabel("predicted position")
    ax.set_ylabel("true position")
    acc = sum(counts[i][i] for i in range(NUM_POSITIONS)) / max(1, sum(map(sum, counts)))
    ax.set_title(f"relative position (layout 1 2 3 / 4 _ 5 / 6 7 8), accuracy {acc:.1%}", fontsize=9)
    fig.tight_layout()
    png = stem.with_suffix(".png")
    with atomic_writer(png) as f:
        fig.savefig(f, format="png", dpi=100)
    return png
