"""Startup faults stop a real uvicorn process, or `make run`'s workers, with a non-zero exit and one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.cgroup import cpu_limit
from tests.support.fakes import ConstantDigit, write_checkpoint
from tests.support.live_server import MAKE_RUN, UVICORN
from tests.support.service import ROOT, SHIPPED_MODEL

LAUNCHERS = {"uvicorn": [*UVICORN], "make-run": [*MAKE_RUN]}


def start(env: dict[str, str], launcher: str = "uvicorn", workers: str = "2") -> subprocess.CompletedProcess[str]:
    workers_arg = ["--workers", workers] if launcher == "make-run" else []
    return subprocess.run(
        [sys.executable, "-m", *LAUNCHERS[launcher], *workers_arg, "--port", "0"],
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
        (
            lambda tmp: {
                "DIGITSUM_MODEL_PATH": str(write_checkpoint(ConstantDigit(3), tmp / "m.pt")),
                "DIGITSUM_NONDIGIT_THRESHOLD": "0.9",
            },
            "DIGITSUM_NONDIGIT_THRESHOLD is set but checkpoint",
        ),
        (lambda tmp: {"DIGITSUM_NONDIGIT_THRESHOLD": "1.5"}, "Invalid setting DIGITSUM_NONDIGIT_THRESHOLD='1.5'"),
    ],
    ids=[
        "missing",
        "corrupt",
        "tampered",
        "cuda-without-gpu",
        "bad-device",
        "bad-batch-size",
        "threshold-without-detector",
        "bad-threshold",
    ],  # fmt: skip
)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_bad_startup_exits_with_one_clear_line(tmp_path: Path, make_env, line: str, launcher: str) -> None:  # type: ignore[no-untyped-def]
    result = start(make_env(tmp_path), launcher)
    assert result.returncode == 3 if launcher == "make-run" else result.returncode != 0  # uvicorn's STARTUP_FAILURE
    assert line in result.stderr
    assert "Traceback" not in result.stderr
    # the same line from each worker that got as far (the first to fail stops the others), and the launcher's
    assert 1 <= sum(line in text for text in result.stderr.splitlines()) <= (3 if launcher == "make-run" else 1)
    if launcher == "make-run" and "Invalid setting" not in line:  # a setting is checked before any worker starts
        assert re.search(
            rf"startup failed: worker \d+ exited with status 3: .*{re.escape(line)}.*; stopping$", result.stderr, re.M
        )


def test_a_checkpoint_that_fails_its_self_test_stops_the_launcher_with_the_reason(tmp_path: Path) -> None:
    """A lone uvicorn stays up, not ready (503), saying why; `make run`'s workers listen only once self-tested."""
    model = write_checkpoint(ConstantDigit(3), tmp_path / "three.pt")
    result = start({"DIGITSUM_MODEL_PATH": str(model)}, "make-run")
    assert result.returncode == 3
    reason = "self-test failed: selftest-7.png: expected digit 7, sum 9; got 3, 5"
    assert re.search(
        rf"ERROR digitsum startup failed: worker \d+ exited with status 3: {reason}; stopping$", result.stderr, re.M
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--port", "99999"], "--port 99999 is not a port number from 0 to 65535"),
        (["--port", "http"], "--port http is not a port number from 0 to 65535"),
        (["--workers", "0"], "--workers 0 must be auto or a whole number of at least 1"),
        (["--workers", "many"], "--workers many must be auto or a whole number of at least 1"),
    ],
)
def test_a_bad_command_line_is_one_line(args: list[str], line: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *MAKE_RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"python -m app.serve: argument {args[0]}: {line} (see --help)"]


@pytest.mark.parametrize(
    "make_path", [lambda tmp: tmp / "absent", lambda tmp: tmp / "a-file"], ids=["absent", "a-file"]
)
def test_a_metrics_directory_that_is_not_a_writable_directory_is_one_line(tmp_path: Path, make_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a-file").write_text("")
    path = make_path(tmp_path)
    result = start({"PROMETHEUS_MULTIPROC_DIR": str(path)}, "make-run")
    assert result.returncode == 3
    assert f"PROMETHEUS_MULTIPROC_DIR={path} is not a writable directory; create it" in result.stderr
    assert "Traceback" not in result.stderr and "started worker" not in result.stderr


def test_workers_auto_starts_one_per_cpu_this_process_may_use(tmp_path: Path) -> None:
    result = start({"DIGITSUM_MODEL_PATH": str(tmp_path / "nope.pt")}, "make-run", workers="auto")
    cpus, why = cpu_limit()
    assert f"--workers auto: {cpus} ({why})" in result.stderr
    assert result.stderr.count("started worker") == cpus  # then the missing checkpoint stopped them
