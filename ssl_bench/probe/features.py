"""Per-split features of a frozen trunk, extracted once and kept in the on-disk cache when enabled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssl_bench.data.images import SkipCounter
from ssl_bench.probe.feature_cache import FeatureStore, cache_key, load_or_extract
from ssl_bench.probe.heads import FeatureExtractor


class Features:
    """Per-split features of a frozen trunk, through the on-disk cache when enabled."""

    def __init__(self, extractor: FeatureExtractor, trunk_id: str, transform: str, cache_dir: Path | None,
                 fingerprint: str, skips: SkipCounter) -> None:
        self.extractor, self.trunk_id, self.transform = extractor, trunk_id, transform
        self.cache_dir, self.fingerprint, self.skips = cache_dir, fingerprint, skips
        self.hits = self.misses = 0

    def get(self, split: str, loader: DataLoader, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        layers = list(self.extractor.layers)
        if self.cache_dir is None:
            return self._extract(loader)
        store = FeatureStore(self.cache_dir, cache_key(self.trunk_id, self.transform, split, self.fingerprint))
        # one process (DDP rank, or job sharing the cache) extracts; the others wait, then read
        feats, labels, hit = load_or_extract(store, layers, lambda missing: self._batches(loader, missing), n,
                                             {"trunk": self.trunk_id, "transform": self.transform, "split": split})
        self.hits, self.misses = self.hits + hit, self.misses + (not hit)
        return feats, labels

    def _batches(self, loader: DataLoader, layers: list[str]):
        ex = self.extractor
        sub = (FeatureExtractor(ex.trunk, layers, ex.resize, ex.input_space, ex.channels_last, pooling=ex.pooling)
               if layers != list(ex.layers) else ex)
        device = next(ex.trunk.parameters()).device
        for batch in loader:
            self.skips.add(batch["skipped"])
            if batch["image"].numel():
                with torch.inference_mode():
                    yield sub(batch["image"].to(device)), batch["label"]

    def _extract(self, loader: DataLoader) -> tuple[dict[str, np.ndarray], np.ndarray]:
        feats: dict[str, list] = {}
        labels = []
        for f, y in self._batches(loader, list(self.extractor.layers)):
            for k, v in f.items():
                feats.setdefault(k, []).append(v.cpu().numpy().astype(np.float16))
            labels.append(y.numpy())
        return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)
