"""Per-batch, vectorised augmentation: pure functions of (images, generator).

Uploads reach the network after MNIST-style preprocessing (digit fit in 20x20, centred by
centre of mass), so what still varies is a little position, slant, size and pen width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device) * (high - low) + low


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_degrees: float = 12.0,
    scale: tuple[float, float] = (0.85, 1.15),
    max_shift_px: float = 2.0,
) -> torch.Tensor:
    """Rotate, scale and shift each image of (B, 1, H, W) by its own random amount."""
    b, _, h, w = images.shape
    angle = _uniform(b, -max_degrees, max_degrees, generator, images.device) * math.pi / 180
    inv_scale = 1 / _uniform(b, *scale, generator, images.device)  # grid maps output -> input
    shift = _uniform(2 * b, -max_shift_px, max_shift_px, generator, images.device).view(b, 2) * 2 / w
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def random_stroke(
    images: torch.Tensor, generator: torch.Generator, p_thin: float = 0.2, p_thick: float = 0.3
) -> torch.Tensor:
    """Thin (erode) or thicken (dilate) the strokes of a random subset of (B, 1, H, W)."""
    dilated = F.max_pool2d(images, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-images, 3, stride=1, padding=1)
    # soften the 3x3 morphology so a thickened stroke grows by about one pixel, not two
    thick, thin = (images + dilated) / 2, (images + eroded) / 2
    choice = torch.rand(images.shape[0], generator=generator).to(images.device).view(-1, 1, 1, 1)
    out = torch.where(choice < p_thin, thin, images)
    return torch.where(choice > 1 - p_thick, thick, out)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training-time augmentation of a batch in [0, 1]."""
    return random_affine(random_stroke(images, generator), generator).clamp_(0, 1)
