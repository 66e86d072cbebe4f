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


def brush_render(
    dist: torch.Tensor,
    long_side: torch.Tensor,
    generator: torch.Generator,
    width_share: tuple[float, float] = (0.07, 0.32),
    out_size: int = 28,
) -> torch.Tensor:
    """Re-draw digits with a uniform round brush, then fit them as the service's preprocessing does.

    dist: (B, S, S) distance to each digit's pen path (training.strokes), long_side: (B,) its extent. The
    draw page's brush is 7% of the canvas, so a digit drawn over 90% of it has strokes ~8% of its height
    and one drawn over a quarter ~30%: the brush width is drawn from `width_share` of the digit's extent.
    The result is fitted MNIST-style: longest side 20 of 28 pixels, centre of mass at the centre.
    """
    b = dist.shape[0]
    share = _uniform(b, *width_share, generator, dist.device)
    radius = (share * long_side / (1 - share) / 2).view(-1, 1, 1)  # width w: w / (skeleton + w) = share
    ink = (radius + 0.5 - dist.float()).clamp_(0, 1).unsqueeze(1)  # (B, 1, S, S), anti-aliased edge
    ink = F.avg_pool2d(ink, 3, stride=1, padding=1)  # a little blur: sampling below takes every other pixel
    return fit_mnist_style(ink, out_size)


def fit_mnist_style(ink: torch.Tensor, out_size: int = 28, box: float = 20.0) -> torch.Tensor:
    """(B, 1, S, S) ink -> (B, 1, out, out): bounding box's long side to `box` pixels, centre of mass centred."""
    b, s = ink.shape[0], ink.shape[-1]
    coords = (torch.arange(s, device=ink.device, dtype=ink.dtype) + 0.5) / s * 2 - 1  # pixel centres in [-1, 1]
    rows_on, cols_on = ink[:, 0].amax(2) > 0.05, ink[:, 0].amax(1) > 0.05  # (B, S) each

    def extent(on: torch.Tensor) -> torch.Tensor:
        first = torch.where(on, coords, torch.full_like(coords, 2.0)).amin(1)
        last = torch.where(on, coords, torch.full_like(coords, -2.0)).amax(1)
        return (last - first + 2 / s).clamp(min=2 / s)

    long = torch.maximum(extent(rows_on), extent(cols_on))  # (B,) in normalised units
    mass = ink[:, 0].sum((1, 2)).clamp(min=1e-6)
    cy = (ink[:, 0].sum(2) * coords).sum(1) / mass
    cx = (ink[:, 0].sum(1) * coords).sum(1) / mass
    scale = long * out_size / (2 * box)  # input units per output unit: the long side spans `box` pixels
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale, zero, cx], 1), torch.stack([zero, scale, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    out = F.grid_sample(ink, grid, align_corners=False, padding_mode="zeros")
    return out / out.amax((2, 3), keepdim=True).clamp(min=1e-6)  # full ink, as preprocessing stretches it
