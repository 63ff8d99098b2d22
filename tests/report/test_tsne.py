"""t-SNE pictures: the PNG has the size asked for, and the embedding keeps well-separated clusters apart
(checked with scikit-learn's kNN on the 2-D points)."""

from __future__ import annotations

import sys
import types

import numpy as np
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ssl_bench.report.tsne import log_wandb_image, tsne_embedding, write_tsne_png


def _clusters(n: int = 60, dims: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters of n points each, 20 standard deviations apart."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(dims)
    centre[0] = 20.0
    x = np.concatenate([rng.standard_normal((n, dims)), centre + rng.standard_normal((n, dims))])
    return x.astype(np.float32), np.repeat([0, 1], n)


def test_embedding_keeps_separated_clusters_apart():
    x, y = _clusters()
    emb = tsne_embedding(x, seed=0)
    assert emb.shape == (120, 2)
    accuracy = cross_val_score(KNeighborsClassifier(n_neighbors=5), emb, y, cv=5).mean()
    assert accuracy > 0.9


def test_png_has_the_requested_size(tmp_path):
    x, y = _clusters(n=20)
    path = write_tsne_png(x, y, tmp_path / "fig" / "tsne.png", title="conv5", class_names=["a", "b"], size_px=400)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (400, 400)


def test_wandb_image_only_with_an_active_run(tmp_path, monkeypatch):
    logged = []
    fake = types.SimpleNamespace(run=None, Image=lambda path, caption="": ("image", path, caption))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert not log_wandb_image(tmp_path / "a.png", "monitor/tsne")
    fake.run = types.SimpleNamespace(log=logged.append)
    assert log_wandb_image(tmp_path / "a.png", "monitor/tsne", caption="conv5")
    assert logged == [{"monitor/tsne": ("image", str(tmp_path / "a.png"), "conv5")}]
