"""Startup faults stop a real uvicorn process, or `make run`'s workers, with a non-zero exit and one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live_server import MAKE_RUN, UVICORN
from tests.support.service import ROOT, SHIPPED_MODEL

LAUNCHERS = {"uvicorn": [*UVICORN], "make-run": [*MAKE_RUN, "--workers", "2"]}


def start(env: dict[str, str], launcher: str = "uvicorn") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *LAUNCHERS[launcher], "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_shipped(tmp_path: Path) -> Path:
    path = tmp_path / "digitsum.pt"
    path.write_bytes(SHIPPED_MODEL.read_bytes())
    path.with_suffix(".json").write_text(SHIPPED_MODEL.with_suffix(".json").read_text())
    return path


def corrupt(tmp_path: Path) -> Path:
    """Garbage bytes with a card that vouches for them: the load itself must fail cleanly."""
    path = copy_shipped(tmp_path)
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    card = json.loads(path.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def tampered(tmp_path: Path) -> Path:
    path = copy_shipped(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0")  # still loads, but is not the file its card describes
    return path


@pytest.mark.parametrize(
    ("make_env", "line"),
    [
        (lambda tmp: {"DIGITSUM_MODEL_PATH": str(tmp / "nope.pt")}, "nope.pt not found; set DIGITSUM_MODEL_PATH"),
        (lambda tmp: {"DIGITSUM_MODEL_PATH": str(corrupt(tmp))}, "is not a readable DigitSum TorchScript file"),
        (lambda tmp: {"DIGITSUM_MODEL_PATH": str(tampered(tmp))}, "does not match its card digitsum.json"),
        (lambda tmp: {"DIGITSUM_DEVICE": "cuda"}, "DIGITSUM_DEVICE=cuda but no CUDA GPU is visible"),
        (lambda tmp: {"DIGITSUM_DEVICE": "gpu"}, "Invalid setting DIGITSUM_DEVICE='gpu'"),
        (lambda tmp: {"DIGITSUM_MAX_BATCH_SIZE": "0"}, "Invalid setting DIGITSUM_MAX_BATCH_SIZE='0'"),
    ],
    ids=["missing", "corrupt", "tampered", "cuda-without-gpu", "bad-device", "bad-batch-size"],
)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_bad_startup_exits_with_one_clear_line(tmp_path: Path, make_env, line: str, launcher: str) -> None:  # type: ignore[no-untyped-def]
    result = start(make_env(tmp_path), launcher)
    assert result.returncode != 0
    assert line in result.stderr
    assert "Traceback" not in result.stderr
    # the same line from each worker that got as far (the first to fail stops the others)
    assert 1 <= sum(line in text for text in result.stderr.splitlines()) <= (2 if launcher == "make-run" else 1)
