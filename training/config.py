"""One dataclass holds every knob of a training run; the CLI is derived from it, help text and defaults included."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

Dataset = Literal["auto", "sample", "mnist"]
Device = Literal["auto", "cpu", "cuda"]
T = TypeVar("T")

DESCRIPTION = """Train DigitSumNet and export the checkpoint with its model card beside it.
Each option is a field of training.config.TrainConfig: add a knob there and it appears here."""


def knob(default: T, why: str) -> T:
    """A config field whose default comes with its reason; the reason is the option's --help text."""
    return field(default=default, metadata={"help": why})


@dataclass
class TrainConfig:
    dataset: Dataset = knob("auto", "auto: full MNIST when present or downloadable, else the 5k sample")
    data_dir: Path = knob(Path("data"), "where torchvision keeps (or downloads) full MNIST")
    epochs: int = knob(30, "passes over the training set; the sample is small: many short epochs, fresh augmentation")
    batch_size: int = knob(
        128, "images per step; small batches = more steps per epoch on a small data set, CPU-friendly"
    )
    lr: float = knob(3e-3, "peak AdamW learning rate of the digit CNN's one-cycle schedule")
    sum_head_lr: float = knob(
        0.05,
        "peak learning rate of the sum head: its 1,900 weights must grow to confident logits in a few hundred steps",
    )
    weight_decay: float = knob(5e-4, "AdamW decoupled weight decay; mild regularisation for a 4k-image data set")
    label_smoothing: float = knob(
        0.05, "label smoothing of the digit loss; keeps its confidences calibrated for the service's thresholds"
    )
    elastic_px: float = knob(
        0.0,
        "RMS displacement, in pixels, of the elastic deformation augmentation (training/augment.py); 0: off, "
        "because 0.75 and 1.5 measured worse on the training split (benchmarks/results/recipes_augment.md)",
    )
    elastic_sigma: float = knob(4.0, "smoothness of the elastic deformation: its Gaussian's sigma, in pixels")
    lowres_share: float = knob(
        0.2,
        "share of each batch seen through a coarse grid of 7 to 14 px first (small scans, thumbnails); 0.2 measured "
        "better than 0 and 0.4 on the training split, two seeds (benchmarks/results/recipes_augment.md)",
    )
    width: int = knob(
        24, "channels of the first conv block (then 2x, 4x); the smallest that met the accuracy target in time"
    )
    drawn_share: float = knob(
        0.5,
        "share of each batch replaced by the same digits drawn as the draw page draws them (training/page.py); "
        "0.5 measured best of 0, 0.3 and 0.5 on training-split data (benchmarks/results/recipes.md)",
    )
    nondigit_share: float = knob(
        0.0,
        "non-digits drawn on the page (training/nondigits.py) added to each batch, as a share of its digits, with a "
        "flat target: the network learns doubt for letters and doodles; 0: off, because 0.125 cost 2-6% "
        "on the drawn dev half over two seeds (benchmarks/results/recipes_nondigits.md)",
    )
    detector_epochs: int = knob(
        6,
        "passes of the non-digit detector (training/detector.py) over the training set, after the digit network; "
        "0: no detector. About 15 s on 2 cores, drawing its non-digits included (benchmarks/results/train.md)",
    )
    detector_width: int = knob(
        32, "channels of the non-digit head's 1x1 conv over the digit CNN's 7x7 maps (under 1% of its multiply-adds)"
    )
    holdout_per_digit: int = knob(
        10,
        "training images per digit kept out of training to calibrate on (0: no calibration); the drawn "
        "evaluation set (benchmarks/drawn_set.py) is drawn from the last 10, so they must stay unseen",
    )
    threads: int = knob(
        2, "intra-op threads (0: torch's default); fixed, because the thread count changes float summation order"
    )
    seed: int = knob(0, "seeds weights, batch order, integer draws and augmentation: same seed, same metrics")
    device: Device = knob("auto", "auto: CUDA when available, else CPU")
    out: Path = knob(Path("models/digitsum.pt"), "the checkpoint; its card, history and plots go beside it")
    dry_run: bool = knob(False, "one tiny epoch on a few batches: exercises the whole path in seconds")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """One --option per field, named after it, with the field's reason as help and its default shown."""
        parser = argparse.ArgumentParser(
            prog="python -m training", description=DESCRIPTION, formatter_class=HelpFormatter
        )
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            why = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help text
            parser.add_argument("--" + f.name.replace("_", "-"), help=why, **_argparse_kind(f.default, hints[f.name]))
        return parser

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> TrainConfig:
        return cls(**vars(cls.parser().parse_args(argv)))

    def as_dict(self) -> dict[str, object]:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, and keeps the description's line breaks."""


def _argparse_kind(default: Any, hint: Any) -> dict[str, Any]:
    """How argparse reads a field of this type: a flag for bools, choices for Literals, else the type itself."""
    assert default is not MISSING, "every TrainConfig field needs a default"
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true", "default": default}
    if typing.get_origin(hint) is Literal:
        return {"choices": typing.get_args(hint), "default": default}
    return {"type": hint, "default": default}
