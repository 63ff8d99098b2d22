"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018 style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores of test samples from their k most cosine-similar training samples.

    Each neighbour votes for its class with weight exp(similarity / temperature).

    Args:
        train_x: N x d, train_y: N int64, test_x: M x d.
    Returns:
        M x num_classes scores (argmax = prediction).
    """
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"knn: train features have {train_x.shape[1]} dims, test {test_x.shape[1]}")
    k = min(k, train_x.shape[0])
    tr = F.normalize(train_x.float(), dim=1)
    out = torch.empty(test_x.shape[0], num_classes)
    for i in range(0, test_x.shape[0], chunk):
        sim = F.normalize(test_x[i:i + chunk].float(), dim=1) @ tr.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
        out[i:i + chunk] = votes
    return out


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Percent of rows whose label is among the k highest scores."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()
