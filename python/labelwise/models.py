"""Small reference models used by the examples and the campaign driver (needs PyTorch).

* :class:`UNet2d` — a two-level 2D U-Net backbone (``w``-``2w``-``4w`` channels, BatchNorm + ReLU),
  returning ``w`` feature channels at full resolution; height and width must be multiples of 4.
* :class:`Segmenter` — that backbone followed by a :class:`labelwise.torch.MCDropoutHead`:
  ``forward`` gives logits for training, ``model.head.score(model.backbone(x), K, metrics, seed)``
  the per-pixel MC-dropout uncertainty maps.
* :func:`with_coords` — image slices plus row / column / slice-position channels (lobe boundaries
  are largely a matter of where a pixel is).

One implementation, shared by ``examples/python/mri_uncertainty.py`` and the Colin27 segmentation
campaign (``python -m labelwise.campaign --dataset colin27``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .torch import MCDropoutHead

__all__ = ["UNet2d", "Segmenter", "build_segmenter", "with_coords"]


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet2d(nn.Module):
    """Two-level 2D U-Net backbone: ``[B, cin, H, W]`` -> features ``[B, w, H, W]`` (H, W multiples of 4)."""

    def __init__(self, cin: int = 4, w: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _block(cin, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.out_channels = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"UNet2d: expected [B, C, H, W] with H and W multiples of 4, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        return self.dec1(torch.cat([self.up1(d2), e1], dim=1))


class Segmenter(nn.Module):
    """:class:`UNet2d` backbone + :class:`labelwise.torch.MCDropoutHead` (dropout rate ``p``)."""

    def __init__(self, num_classes: int, p: float = 0.3, width: int = 16, in_channels: int = 4) -> None:
        super().__init__()
        self.backbone = UNet2d(in_channels, width)
        self.head = MCDropoutHead(self.backbone.out_channels, num_classes, p=p, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_segmenter(num_classes: int, p: float = 0.3, width: int = 16, in_channels: int = 4) -> Segmenter:
    return Segmenter(num_classes, p, width, in_channels)


def with_coords(img: Any, z: Any) -> torch.Tensor:
    """``[S, 1, H, W]`` images and their slice positions ``[S]`` (in [-1, 1]) -> ``[S, 4, H, W]`` float32
    (image, row, column, slice position; rows and columns span [-1, 1]). ValueError for other shapes
    (one position per image) and for masked arrays with masked entries."""
    from . import _arrays

    _arrays.refuse_masked(img, "img")
    _arrays.refuse_masked(z, "z")
    img = torch.as_tensor(np.asarray(img, dtype=np.float32))
    if img.dim() != 4 or img.shape[1] != 1:
        raise ValueError(f"with_coords: expected images [S, 1, H, W], got {tuple(img.shape)}")
    S, _, H, W = img.shape
    zv = np.asarray(z, dtype=np.float32)
    if zv.shape != (S,):
        raise ValueError(f"z: expected one slice position per image, shape ({S},), got {zv.shape}")
    rows = torch.linspace(-1, 1, H).view(1, 1, H, 1).expand(S, 1, H, W)
    cols = torch.linspace(-1, 1, W).view(1, 1, 1, W).expand(S, 1, H, W)
    zs = torch.as_tensor(zv).view(S, 1, 1, 1).expand(S, 1, H, W)
    return torch.cat([img, rows, cols, zs], dim=1)
