"""The non-digit detector as the service uses it: `no_digit` flags an answer and never changes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.errors import StartupError
from app.main import create_app
from app.model import DeviceChoice, Model
from app.settings import Settings
from tests.support.digits import Sample
from tests.support.fakes import ConstantDigit, WithConstantDetector, write_checkpoint
from tests.support.service import SHIPPED_MODEL, png_bytes, wait_ready

DETECTOR_CARD: dict[str, object] = {
    "format_version": 1,
    "architecture": {"name": "fake"},
    "detector": {"threshold": 0.5},
}


@pytest.mark.parametrize("nondigit", [0.9, 0.1])
def test_no_digit_flags_the_answer_and_never_changes_it(
    tmp_path: Path, sample: Sample, client: TestClient, nondigit: float
) -> None:
    shipped = torch.jit.load(str(SHIPPED_MODEL))
    path = write_checkpoint(WithConstantDetector(shipped, nondigit), tmp_path / "m.pt", DETECTOR_CARD)
    image = ("d.png", png_bytes(sample.test.images[0]), "image/png")
    without = client.post("/predict", files={"image": image}, data={"number": "4"}).json()
    with TestClient(create_app(Settings(model_path=path, device="cpu"))) as flagging:
        wait_ready(flagging)
        answer = flagging.post("/predict", files={"image": image}, data={"number": "4"}).json()
        batch = flagging.post("/predict/batch", files=[("images", image)], data={"numbers": "4"}).json()
    assert without["low_confidence"] is False and without["no_digit"] is False  # a clear 7
    flag = nondigit > 0.5
    assert answer == {**without, "no_digit": flag, "low_confidence": flag}  # the same digit, sum and probabilities
    assert batch["results"][0]["prediction"] == answer


def test_a_checkpoint_without_a_detector_never_says_no_digit(tmp_path: Path) -> None:
    path = write_checkpoint(ConstantDigit(3), tmp_path / "m.pt")
    model = Model(path, DeviceChoice(torch.device("cpu"), "test"))
    assert model.nondigit_threshold is None
    assert [p.no_digit for p in model.predict(np.zeros((4, 28, 28), np.float32), [0, 1, 2, 3])] == [False] * 4


def test_a_card_promising_a_detector_the_module_lacks_stops_startup(tmp_path: Path) -> None:
    path = write_checkpoint(ConstantDigit(3), tmp_path / "m.pt", DETECTOR_CARD)
    with pytest.raises(StartupError, match="no `answer` method; retrain"):
        Model(path, DeviceChoice(torch.device("cpu"), "test"))


def test_a_threshold_set_for_a_checkpoint_without_a_detector_stops_startup(tmp_path: Path) -> None:
    path = write_checkpoint(ConstantDigit(3), tmp_path / "m.pt")
    with pytest.raises(StartupError, match="DIGITSUM_NONDIGIT_THRESHOLD is set but .* has no non-digit detector"):
        Model(path, DeviceChoice(torch.device("cpu"), "test"), nondigit_threshold=0.9)


@pytest.mark.parametrize(("setting", "no_digit"), [(None, True), (0.95, False), (1.0, False), (0.0, True)])
def test_the_threshold_setting_overrides_the_cards(tmp_path: Path, setting: float | None, no_digit: bool) -> None:
    path = write_checkpoint(
        WithConstantDetector(torch.jit.load(str(SHIPPED_MODEL)), 0.9), tmp_path / "m.pt", DETECTOR_CARD
    )
    model = Model(path, DeviceChoice(torch.device("cpu"), "test"), nondigit_threshold=setting)
    assert model.nondigit_threshold == (0.5 if setting is None else setting)  # the card says 0.5
    assert model.predict(np.zeros((1, 28, 28), np.float32), [0])[0].no_digit is no_digit
