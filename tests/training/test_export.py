"""The model card is a pure function of what the run measured and how it went: it runs nothing itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import DigitData, Split
from training.export import Provenance, git_commit, model_card
from training.measure import Measurements


def test_the_card_reports_its_inputs_and_nothing_else() -> None:
    split = Split(torch.zeros(20, 28, 28, dtype=torch.uint8), torch.arange(20) % 10)
    data = DigitData("sample", "a split", split, split)
    measured = Measurements(
        test={"test_digit_acc": 0.987654321, "test_sum_acc": 0.5, "test_digit_ece": 0.0123456},
        sum_head_exact_pairs=97,
        cpu_inference={"ms_per_image_batch1": 1.5, "threads": 3},
        calibration={"digit_temperature": 1.25, "test_flags": {}},
    )
    run = Provenance(epochs_run=2, seconds=12.3, device="cpu", torch_version="x", created_at="t", git_commit=None)
    architecture = {"name": "Net", "model_args": {"width": 1}, "parameters": 7}
    card = model_card(TrainConfig(seed=5), data, architecture, measured, run)
    assert card == model_card(TrainConfig(seed=5), data, architecture, measured, run)
    assert card["architecture"] == architecture
    assert card["metrics"]["digit_accuracy"] == 0.98765 and card["metrics"]["sum_head_exact_pairs"] == 97
    assert card["metrics"]["digit_ece"] == 0.01235
    assert card["cpu_inference"] == measured.cpu_inference and card["calibration"] == measured.calibration
    assert card["training"]["seed"] == 5 and card["training"]["epochs_run"] == 2 and card["training"]["seconds"] == 12.3
    assert (card["torch_version"], card["created_at"], card["git_commit"]) == ("x", "t", None)


def test_a_run_without_calibration_has_no_calibration_section() -> None:
    split = Split(torch.zeros(20, 28, 28, dtype=torch.uint8), torch.arange(20) % 10)
    measured = Measurements({"test_digit_acc": 1.0, "test_sum_acc": 1.0, "test_digit_ece": 0.0}, 100, {}, None)
    run = Provenance(1, 1.0, "cpu", "x", "t", None)
    card = model_card(TrainConfig(), DigitData("sample", "s", split, split), {}, measured, run)
    assert "calibration" not in card


def test_the_card_names_the_commit_and_says_when_the_code_had_changes_of_its_own(tmp_path: Path) -> None:
    def git(*words: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *words]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    assert git_commit(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "train.py").write_text("epochs = 30\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "recipe")
    head = git("rev-parse", "HEAD")
    (tmp_path / "runs.txt").write_text("an untracked file is no change to the code\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "train.py").write_text("epochs = 10\n")
    assert git_commit(tmp_path) == f"{head}-dirty"
