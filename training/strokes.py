"""The pen paths inside MNIST digits, for re-drawing them the way the draw page does (a uniform round brush).

A digit's skeleton (one pixel wide, on a 2x grid for smoother curves) is where a pen's centre went; the
distance from every pixel to it turns "ink within r of the pen's path" into one comparison per pixel,
so a batch can be re-rendered at any brush width on the fly (augment.brush_render).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

SCALE = 2  # skeletons on a 56x56 grid: a 28x28 skeleton is too jagged to re-draw round strokes from
INK_THRESHOLD = 0.4  # share of full ink that counts as stroke when skeletonising the upsampled digit


def skeletons(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 28, 28) -> bool (N, 56, 56): each digit's one-pixel-wide centre line."""
    big = F.interpolate(images[:, None].float() / 255, scale_factor=SCALE, mode="bilinear", align_corners=False)
    masks = (big[:, 0] > INK_THRESHOLD).numpy()
    return np.stack([skeletonize(mask) for mask in masks])


def stroke_maps(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) -> (distance to the skeleton in 56-grid pixels (N, 56, 56) float16, skeleton long side (N,)).

    A digit with no skeleton (blank) gets distance 1e3 everywhere and long side 1: it re-renders blank.
    """
    skels = skeletons(images)
    dist = np.full(skels.shape, 1e3, dtype=np.float32)
    long_side = np.ones(len(skels), dtype=np.float32)
    for i, skel in enumerate(skels):
        if skel.any():
            dist[i] = distance_transform_edt(~skel)
            rows, cols = np.flatnonzero(skel.any(1)), np.flatnonzero(skel.any(0))
            long_side[i] = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    return torch.from_numpy(dist).half(), torch.from_numpy(long_side)
