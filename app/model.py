"""The network as the service sees it: a TorchScript file, its card, a device, and batched inference."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.errors import StartupError

log = logging.getLogger("digitsum")

METADATA_FILE = "metadata.json"  # extra file inside the TorchScript archive (training/export.py)
SUPPORTED_FORMAT = 1
UNCALIBRATED_THRESHOLD = 0.6  # low-confidence threshold for a card without a calibration section


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str


@dataclass(frozen=True)
class Prediction:
    digit: int
    sum: int  # always digit + number: the joint decision cannot contradict itself
    digit_probabilities: list[float]  # 10 floats
    sum_probabilities: list[float]  # 19 floats
    heads_agree: bool  # the digit head's and the sum head's own argmaxes both name this answer
    no_digit: bool = False  # the non-digit detector flags the image: a letter, a shape, a scribble


def decide(digit_p: np.ndarray, sum_p: np.ndarray, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One answer per row from both heads: the digit d maximising P_digit(d) * P_sum(d + number).

    (B, 10) digit and (B, 19) sum probabilities and (B,) numbers -> (B,) digits and (B,) heads_agree.
    Taking each head's argmax on its own answered "7 + 3 = 5" when the digit distribution was split
    between 2 and 7 (benchmarks/results/consistency.md): the sum head's linear map of a mixture can
    favour the other digit's sum. Scoring the ten (digit, digit + number) pairs jointly keeps both
    outputs the network's and makes the arithmetic right by construction; `heads_agree` says whether
    each head alone would have said the same, so a caller can show doubt when they split.
    """
    pair_sums = np.take_along_axis(sum_p, numbers[:, None] + np.arange(10), axis=1)  # (B, 10): P_sum(d + n)
    digits = (np.log(digit_p + 1e-30) + np.log(pair_sums + 1e-30)).argmax(axis=1)
    return digits, (digit_p.argmax(axis=1) == digits) & (sum_p.argmax(axis=1) == digits + numbers)


def choose_device(requested: str) -> DeviceChoice:
    """Resolve DIGITSUM_DEVICE; an impossible request stops startup, a fallback is reported."""
    if torch.cuda.is_available() and requested in ("auto", "cuda"):
        return DeviceChoice(
            torch.device("cuda"), f"DIGITSUM_DEVICE={requested} and {torch.cuda.get_device_name()} is available"
        )
    if requested == "cuda":
        raise StartupError("DIGITSUM_DEVICE=cuda but no CUDA GPU is visible; set DIGITSUM_DEVICE=auto or cpu.")
    if requested == "auto":
        log.warning("no CUDA GPU is available: serving on the CPU")
        return DeviceChoice(torch.device("cpu"), "DIGITSUM_DEVICE=auto and no CUDA GPU is available: CPU fallback")
    return DeviceChoice(torch.device("cpu"), "DIGITSUM_DEVICE=cpu")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_card(path: Path, digest: str, allow_missing: bool) -> dict[str, Any] | None:
    """The card beside the checkpoint must name this file's sha256 (else it was swapped or tampered)."""
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        if not allow_missing:
            raise StartupError(
                f"Model card {card_path} not found, so the checkpoint cannot be verified; restore it, retrain with "
                "`make train`, or set DIGITSUM_ALLOW_MISSING_CARD=true to serve it unverified."
            )
        log.warning("no model card at %s: serving the checkpoint unverified (DIGITSUM_ALLOW_MISSING_CARD)", card_path)
        return None
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise StartupError(f"Model card {card_path} is unreadable ({exc}); restore it or retrain.") from None
    if card.get("sha256") != digest:
        raise StartupError(
            f"Checkpoint {path} does not match its card {card_path.name} (sha256 {digest[:12]}... differs); "
            "restore the shipped files or retrain with `make train`."
        )
    return dict(card)


class Model:
    """A loaded checkpoint on its device; `predict` runs one batch."""

    def __init__(
        self,
        path: Path,
        device: DeviceChoice,
        allow_missing_card: bool = False,
        nondigit_threshold: float | None = None,
    ) -> None:
        if not path.is_file():
            raise StartupError(f"Checkpoint {path} not found; set DIGITSUM_MODEL_PATH or run `make train`.")
        self.path, self.device, self.device_reason = path, device.device, device.reason
        self.sha256 = sha256_of(path)
        verify_card(path, self.sha256, allow_missing_card)
        extra = {METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():  # this torch deprecates TorchScript; the checkpoint format is ours
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
            self.metadata: dict[str, Any] = json.loads(extra[METADATA_FILE])
        except (RuntimeError, ValueError, OSError) as exc:
            raise StartupError(f"Checkpoint {path} is not a readable DigitSum TorchScript file ({exc}).") from None
        if self.metadata.get("format_version") != SUPPORTED_FORMAT:
            raise StartupError(
                f"Checkpoint {path} has format {self.metadata.get('format_version')}, "
                f"this service reads {SUPPORTED_FORMAT}; retrain with `make train`."
            )
        calibration = self.metadata.get("calibration") or {}
        # chosen on training images held out of training (training/calibrate.py), never on the test split
        self.low_confidence_threshold = float(calibration.get("low_confidence_threshold", UNCALIBRATED_THRESHOLD))
        # a card with a detector section promises `answer`, the forward pass plus P(no digit) (training/detector.py)
        detector = self.metadata.get("detector")
        if detector is None and nondigit_threshold is not None:
            raise StartupError(
                f"DIGITSUM_NONDIGIT_THRESHOLD is set but checkpoint {path} has no non-digit detector; unset it, or "
                "retrain with `make train`."
            )
        if detector is not None and not hasattr(self.module, "answer"):
            raise StartupError(f"Checkpoint {path}'s card has a detector but the module no `answer` method; retrain.")
        self.nondigit_threshold: float | None = None  # no detector: never no_digit
        if detector is not None:  # DIGITSUM_NONDIGIT_THRESHOLD, else the one fitted on held-out training images
            self.nondigit_threshold = float(detector["threshold"]) if nondigit_threshold is None else nondigit_threshold
        self.module.eval()
        if self.device.type == "cpu":  # oneDNN's NHWC convolutions: faster, same outputs (serve.md)
            self.module.to(memory_format=torch.channels_last)
        else:  # TF32 moved probabilities measurably (README, GPU); too small a network to need it
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    @torch.inference_mode()
    def predict(self, images: np.ndarray, numbers: list[int]) -> list[Prediction]:
        """(B, 28, 28) float32 in [0, 1] and B integers -> B predictions, both from the network."""
        # Every torch call releases the GIL and must win it back from the event loop and the decoding threads
        # (up to 5 ms each under load), so on the CPU the forward is the only torch call: the rest is numpy.
        batch = torch.from_numpy(images[:, None])  # (B, 1, 28, 28)
        number_array = np.asarray(numbers, dtype=np.int64)  # (B,)
        number_batch = torch.from_numpy(number_array)
        if self.device.type != "cpu":
            batch, number_batch = batch.to(self.device), number_batch.to(self.device)
        outputs = self.network(batch, number_batch)
        if self.device.type != "cpu":
            outputs = tuple(output.cpu() for output in outputs)
        digit_p, sum_p = np.exp(outputs[0].numpy()), np.exp(outputs[1].numpy())  # (B, 10), (B, 19)
        no_digit = outputs[2].numpy() > self.nondigit_threshold if len(outputs) > 2 else np.zeros(len(numbers), bool)
        digits, agree = decide(digit_p, sum_p, number_array)
        return [
            Prediction(d, d + n, dp, sp, a, x)
            for d, n, dp, sp, a, x in zip(
                digits.tolist(),
                numbers,
                digit_p.tolist(),
                sum_p.tolist(),
                agree.tolist(),
                no_digit.tolist(),
                strict=True,
            )
        ]

    def network(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The checkpoint's forward, or its `answer` (forward and P(no digit)) when it has a detector. A frame of its
        own: a profile (benchmarks/serve.py) charges what runs under it to the network."""
        if self.nondigit_threshold is None:
            return self.module(images, numbers)  # type: ignore[no-any-return]
        return self.module.answer(images, numbers)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        """The card for GET /model."""
        return {
            "file": self.path.name,  # not the path: a client learns nothing about the host's layout
            "sha256": self.sha256,
            "device": str(self.device),
            "device_reason": self.device_reason,
            "metadata": self.metadata,
        }
