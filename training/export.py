"""Export: the trained network as TorchScript with its model card inside the archive.

Every other format (torch.export, ONNX) would be one more function beside `export_torchscript`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.data import DigitData
from training.measure import Measurements
from training.model import MNIST_MEAN, MNIST_STD, DigitSumNet

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"  # extra file inside the TorchScript archive
DETECTOR_METHOD = "answer(images, numbers) -> (digit_log_probs, sum_log_probs, nondigit_probability (N,))"


@dataclass(frozen=True)
class Provenance:
    """How and where a run went: gathered by the caller, so that building the card stays a pure function."""

    epochs_run: int
    seconds: float
    device: str
    torch_version: str
    created_at: str
    git_commit: str | None

    @classmethod
    def of_this_run(cls, epochs_run: int, seconds: float, device: torch.device) -> Provenance:
        return cls(epochs_run, round(seconds, 1), str(device), torch.__version__, now_utc(), git_commit())


def model_card(
    config: TrainConfig,
    data: DigitData,
    architecture: dict[str, Any],
    measured: Measurements,
    run: Provenance,
    detector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint's metadata: what the network is, what it was trained on, how well it does, how it was made."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "inputs": {
            "images": "float32 (N,1,28,28) in [0,1], white digit on black, not normalised",
            "numbers": "int64 (N,) in 0..9",
        },
        "outputs": {
            "digit_log_probs": "(N,10), divided by digit_temperature before the softmax",
            "sum_log_probs": "(N,19), sums 0..18, divided by sum_temperature before the softmax",
        },
        "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD, "applied": "inside the module"},
        "dataset": {
            "name": data.name,
            "split": data.split,
            "train_images": len(data.train.labels),
            "test_images": len(data.test.labels),
        },
        "metrics": {
            "digit_accuracy": round(measured.test["test_digit_acc"], 5),
            "sum_accuracy": round(measured.test["test_sum_acc"], 5),
            "sum_accuracy_pairs": "every test image with all ten integers",
            "sum_head_exact_pairs": measured.sum_head_exact_pairs,
            "digit_ece": round(measured.test["test_digit_ece"], 5),
        },
        "cpu_inference": measured.cpu_inference,
        "training": {
            "config": config.as_dict(),
            "seed": config.seed,
            "epochs_run": run.epochs_run,
            "seconds": run.seconds,
            "device": run.device,
        },
        "torch_version": run.torch_version,
        "created_at": run.created_at,
        "git_commit": run.git_commit,
        **({} if measured.calibration is None else {"calibration": measured.calibration}),
        **({} if detector is None else {"detector": {"method": DETECTOR_METHOD, **detector}}),
    }


def export_torchscript(model: DigitSumNet, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the TorchScript checkpoint and the card beside it (metadata + the file's sha256)."""
    with warnings.catch_warnings():  # this torch deprecates TorchScript; our users ask for it
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model.inference_copy())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path), _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    card = {**metadata, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def git_commit(where: Path | None = None, paths: Sequence[str] = ()) -> str | None:
    """The checkout's commit, with "-dirty" when tracked files (of `paths`, git pathspecs, if given) differ from it:
    the card then says that the code which trained it is not that commit's. None outside a git checkout."""

    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=where, capture_output=True, text=True, timeout=5, check=True).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        changes = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changes.strip() else "") if head else None


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
