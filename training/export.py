"""Export: the trained network as TorchScript with its model card inside the archive.

Every other format (torch.export, ONNX) would be one more function beside `export_torchscript`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from training.model import DigitSumNet

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"  # extra file inside the TorchScript archive


def fold_batchnorm(model: DigitSumNet) -> DigitSumNet:
    """A copy for inference with each Conv+BatchNorm folded into one Conv (same outputs, less work)."""
    model = copy.deepcopy(model).cpu().eval()
    for block in model.digit.features:
        if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
            conv, bn = block[0], block[1]
            assert isinstance(conv, nn.Conv2d)
            block[0] = fuse_conv_bn_eval(conv, bn)
            block[1] = nn.Identity()
    return model


def export_torchscript(model: DigitSumNet, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the TorchScript checkpoint and the card beside it (metadata + the file's sha256)."""
    with warnings.catch_warnings():  # this torch deprecates TorchScript; our users ask for it
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(fold_batchnorm(model))
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path), _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    card = {**metadata, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def cpu_latency_ms(model: nn.Module, batch_size: int, repeats: int = 50) -> float:
    """Median CPU time of one forward pass per image, in milliseconds."""
    model = fold_batchnorm(model)  # type: ignore[arg-type]
    images, numbers = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 5):
            start = time.perf_counter()
            model(images, numbers)
            times.append(time.perf_counter() - start)
    return sorted(times[5:])[repeats // 2] * 1000 / batch_size


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
