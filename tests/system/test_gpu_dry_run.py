"""benchmarks/gpu.py --dry-run: the CUDA host's script, run end to end on the CPU so that it never rots.

It serves through app.serve, compares 100 answers with the in-process CPU reference, times the forward variants and
runs wrk; about 1 to 2 minutes on 2 CPU cores. The timings are not checked (they are the script's output, not a
property); the answers and the report's shape are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.service import ROOT


@pytest.mark.slow
def test_gpu_script_runs_its_whole_path_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    command = [sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    assert "/model said device `cpu`. Digits that differ: 0; sums that differ: 0;" in report
    for variant in ("| fp32 | yes |", "| channels-last | yes |", "| bf16 autocast |", "| CUDA graphs | n/a on cpu |"):
        assert variant in report, report
    rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| auto |")) and line.count("|") == 7]
    assert len(rows) == 6, report  # workers 1 and auto, at 1, 64 and 256 connections
    assert all(line.endswith("| 0 |") for line in rows), report  # no errors under load
