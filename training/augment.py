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


def elastic_field(
    shape: torch.Size, generator: torch.Generator, alpha_px: float, sigma_px: float, device: torch.device
) -> torch.Tensor:
    """A smooth random displacement field (B, H, W, 2), in grid_sample's [-1, 1] units (Simard et al., 2003).

    White noise per pixel, blurred by a Gaussian of sigma_px and scaled so that pixels move alpha_px (RMS):
    the stroke bends and wobbles the way another writer's hand would, locally, not as a whole.
    """
    b, _, h, w = shape
    noise = torch.rand(b, 2, h, w, generator=generator).to(device) * 2 - 1
    radius = math.ceil(3 * sigma_px)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=device) / sigma_px) ** 2)
    taps = taps / taps.sum()
    smooth = F.conv2d(noise.view(2 * b, 1, h, w), taps.view(1, 1, 1, -1), padding=(0, radius))
    smooth = F.conv2d(smooth, taps.view(1, 1, -1, 1), padding=(radius, 0)).view(b, 2, h, w)
    smooth = smooth / smooth.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)  # unit RMS, any sigma
    return (smooth * alpha_px * 2 / torch.tensor([w, h], device=device).view(1, 2, 1, 1)).permute(0, 2, 3, 1)


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_degrees: float = 12.0,
    scale: tuple[float, float] = (0.85, 1.15),
    max_shift_px: float = 2.0,
    elastic: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Rotate, scale and shift each image of (B, 1, H, W) by its own random amount; elastic=(alpha_px, sigma_px)
    adds a smooth local deformation (elastic_field) to the same single resampling."""
    b, _, h, w = images.shape
    angle = _uniform(b, -max_degrees, max_degrees, generator, images.device) * math.pi / 180
    inv_scale = 1 / _uniform(b, *scale, generator, images.device)  # grid maps output -> input
    shift = _uniform(2 * b, -max_shift_px, max_shift_px, generator, images.device).view(b, 2) * 2 / w
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    if elastic is not None:
        grid = grid + elastic_field(images.shape, generator, *elastic, images.device)
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


def random_lowres(
    images: torch.Tensor, generator: torch.Generator, share: float, sides: tuple[int, int] = (7, 14)
) -> torch.Tensor:
    """A random `share` of (B, 1, H, W) seen through a coarse grid: each averaged down to a side of `sides` pixels
    (the digit's 20 px to 5-10 cells), then enlarged back smoothly, as a small scan or thumbnail arrives."""
    b, _, h, w = images.shape
    chosen = torch.rand(b, generator=generator) < share
    side = torch.randint(sides[0], sides[1] + 1, (b,), generator=generator)
    out = images.clone()
    for s in side[chosen].unique().tolist():
        which = torch.nonzero(chosen & (side == s)).flatten().to(images.device)
        picked = images[which]
        coarse = F.interpolate(picked, size=(s, s), mode="area")
        fine = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        out[which] = fine * (_peak(picked) / _peak(fine))  # as bright as before: preprocessing stretches ink
    return out


def _peak(images: torch.Tensor) -> torch.Tensor:
    """Each image's brightest value, (B, 1, 1, 1)."""
    return images.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    elastic: tuple[float, float] | None = None,
    lowres_share: float = 0.0,
) -> torch.Tensor:
    """The training-time augmentation of a batch in [0, 1]."""
    images = random_stroke(images, generator)
    if lowres_share > 0:
        images = random_lowres(images, generator, lowres_share)
    return random_affine(images, generator, elastic=elastic).clamp_(0, 1)
