"""t-SNE pictures of a layer's features, coloured by class (scikit-learn TSNE, matplotlib Agg).

Usable on the features of any trunk, e.g. those of ``ssl_bench.pretext.monitor.trunk_features``::

    feats = trunk_features(trunk, images, ["conv5"])["conv5"]
    write_tsne_png(feats.numpy(), labels.numpy(), "conv5_tsne.png", title="conv5")
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_bench.io import atomic_writer


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """N x d features -> N x 2 t-SNE embedding (PCA initialisation, seeded: the same input gives the
    same picture). The perplexity is capped below N, which TSNE requires."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if x.shape[0] < 3:
        raise ValueError(f"t-SNE: expected at least 3 samples, got {x.shape[0]}")
    perplexity = min(float(perplexity), (x.shape[0] - 1) / 3.0)
    # a few hundred points: OpenMP threads cost more than they save, and stall on a busy CPU
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_embedding(embedding: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                   class_names: Sequence[str] | None = None, size_px: int = 800, dpi: int = 100) -> Path:
    """Scatter an N x 2 embedding coloured by the int labels (N) into a size_px x size_px PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    fig = plt.figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    try:
        ax = fig.add_axes((0.04, 0.04, 0.72, 0.9))
        cmap = plt.get_cmap("tab20")
        for i, c in enumerate(np.unique(labels)):
            at = labels == c
            name = class_names[int(c)] if class_names is not None and 0 <= c < len(class_names) else str(c)
            ax.scatter(embedding[at, 0], embedding[at, 1], s=8, color=cmap(i % 20), label=name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=1.5, frameon=False)
        # a fixed canvas (no tight bounding box): every picture of a run has the same size
        with atomic_writer(Path(path)) as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def log_wandb_image(path: str | Path, key: str, caption: str = "") -> bool:
    """Log the PNG as a wandb.Image when a W&B run is active; True when it was logged.

    W&B is never imported here: a process that did not import it has no active run."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    wandb.run.log({key: wandb.Image(str(path), caption=caption)})
    return True


def write_tsne_png(features: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                   class_names: Sequence[str] | None = None, seed: int = 0, size_px: int = 800,
                   wandb_key: str | None = None) -> Path:
    """t-SNE of N x d features coloured by the N labels, written as a size_px-square PNG; also logged
    to the active W&B run under ``wandb_key`` when given."""
    out = plot_embedding(tsne_embedding(features, seed), labels, path, title, class_names, size_px)
    if wandb_key is not None:
        log_wandb_image(out, wandb_key, caption=title)
    return out


__all__ = ["log_wandb_image", "plot_embedding", "tsne_embedding", "write_tsne_png"]
