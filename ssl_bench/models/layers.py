"""The AlexNet family's layer names: the one definition every probe, task and table uses (torch-free)."""

from __future__ import annotations

CONV_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")
LAYERS: tuple[str, ...] = (*CONV_LAYERS, "fc6", "fc7")
