"""Tiny checkpoints with fixed weights, written exactly as the training contract says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ConstantDigit(nn.Module):
    """Always answers `digit` (and digit + number for the sum), whatever the image."""

    def __init__(self, digit: int) -> None:
        super().__init__()
        self.digit = digit

    def forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        digit_logits = torch.full((n, 10), -20.0, device=images.device)
        digit_logits[:, self.digit] = 0.0
        sum_logits = torch.full((n, 19), -20.0, device=images.device)
        sum_logits[torch.arange(n, device=images.device), numbers + self.digit] = 0.0
        return digit_logits.log_softmax(1), sum_logits.log_softmax(1)


def write_checkpoint(module: nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """TorchScript + metadata.json inside + the card beside it with the file's sha256."""
    metadata = {"format_version": 1, "architecture": {"name": type(module).__name__}} if metadata is None else metadata
    torch.jit.script(module).save(str(path), _extra_files={"metadata.json": json.dumps(metadata)})
    card = {**metadata, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


class WithConstantDetector(nn.Module):
    """Another checkpoint's forward pass plus the detector's `answer` method: P(no digit) is `nondigit` for every
    image. Wrapping the shipped model keeps the service's self-test passing, so the service becomes ready."""

    def __init__(self, inner: nn.Module, nondigit: float) -> None:
        super().__init__()
        self.inner, self.nondigit = inner, nondigit

    def forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        digit_log_probs, sum_log_probs = self.inner(images, numbers)
        return digit_log_probs, sum_log_probs

    @torch.jit.export
    def answer(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        digit_log_probs, sum_log_probs = self.forward(images, numbers)
        return digit_log_probs, sum_log_probs, torch.full((images.shape[0],), self.nondigit)
