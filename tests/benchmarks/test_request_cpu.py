"""benchmarks/request_cpu.py drives a real app through ASGI, and reports the ratios its rounds measured."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from benchmarks import request_cpu, serve
from tests.support.digits import Sample
from tests.support.service import SHIPPED_MODEL


def test_a_request_driven_through_asgi_is_answered_like_one_over_http(sample: Sample) -> None:
    """The lifespan runs as a server runs it (the model loads, warms up and self-tests), then uploads are answered."""
    body = serve.multipart_body(serve.png_bytes(sample.test.images[0]), 3)

    async def scenario() -> tuple[list[int], int]:
        app = create_app(Settings(model_path=SHIPPED_MODEL, device="cpu"))
        lifespan = request_cpu.Lifespan(app)
        await lifespan.start()
        statuses = [await request_cpu.post(app, body, serve.FORM)]
        while statuses[-1] == 503:  # warming up
            await asyncio.sleep(0.05)
            statuses.append(await request_cpu.post(app, body, serve.FORM))
        refused = await request_cpu.post(app, serve.multipart_body(b"not an image", 3), serve.FORM)
        await lifespan.stop()
        return statuses, refused

    statuses, refused = asyncio.run(scenario())
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {503}
    assert refused == 415


def test_the_report_takes_each_rounds_ratio_and_their_median() -> None:
    args = argparse.Namespace(before="abc1234", requests=100, rounds=3, callers=8)
    text = request_cpu.report([0.9, 1.2, 1.0], [1.0, 1.0, 2.0], args)
    assert "| 1 | 1.000 | 0.900 | 0.900 |" in text
    assert "| 2 | 1.000 | 1.200 | 1.200 |" in text
    assert "| 3 | 2.000 | 1.000 | 0.500 |" in text
    assert "Median ratio **0.900** (range 0.500-1.200)" in text
    assert "--before abc1234 --requests 100 --rounds 3 --callers 8" in text


def test_the_commit_is_marked_only_when_what_was_measured_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own results file (rewritten by the run) or the README leave the label clean; the app's code does not."""

    def git(*words: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *words], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    for name in ("app/main.py", "benchmarks/results/request_cpu.md", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(request_cpu, "ROOT", tmp_path)
    (tmp_path / "benchmarks/results/request_cpu.md").write_text("two\n")
    (tmp_path / "README.md").write_text("two\n")
    assert not request_cpu.head_commit().endswith("with uncommitted changes")
    (tmp_path / "app/main.py").write_text("two\n")
    assert request_cpu.head_commit().endswith(" with uncommitted changes")
