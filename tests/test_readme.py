"""The README tells the truth: its example answers are the service's, its settings table is complete, and every
results file it cites exists (a number in the README comes from one of them)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.support.service import ROOT

README = (ROOT / "README.md").read_text()


def test_the_settings_table_lists_every_setting() -> None:
    listed = set(re.findall(r"^\| `(DIGITSUM_[A-Z_]+)` \|", README, re.MULTILINE))
    assert listed == {f"DIGITSUM_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("example", ["examples/seven.png", "examples/mnist-7.png"])
def test_the_curl_example_answers_what_the_readme_shows(client: TestClient, example: str) -> None:
    command = "curl -F image=@examples/seven.png -F number=3 localhost:8000/predict"
    shown = json.loads(README.split(command, 1)[1].split("\n", 2)[1])
    with (ROOT / example).open("rb") as image:
        answer = client.post("/predict", files={"image": ("digit.png", image)}, data={"number": 3}).json()
    assert answer.keys() == shown.keys()
    assert {k: answer[k] for k in ("digit", "sum", "number")} == {"digit": 7, "sum": 10, "number": 3}
    if example == "examples/seven.png":
        assert answer == shown  # the same file, the same model: the same answer, to the last digit


def test_every_file_the_readme_cites_exists() -> None:
    cited = set(re.findall(r"`((?:benchmarks|models|examples|tests|deploy|app|training|docs)/[\w./-]+\.\w+)`", README))
    not_yet = {"benchmarks/results/gpu.md"}  # written by the first run on a CUDA host; the README says it has not run
    assert cited and not [path for path in sorted(cited - not_yet) if not (ROOT / path).exists()]


def test_the_hostile_traffic_table_is_the_one_its_results_file_gives() -> None:
    """The README's before/after table is `python benchmarks/hostile.py --compare before after`, not typed in."""
    from benchmarks.hostile import compare

    runs = json.loads((ROOT / "benchmarks" / "results" / "hostile.json").read_text())
    assert compare(runs, "before", "after") in README


def test_the_serving_tables_are_the_ones_their_results_file_gives() -> None:
    """The peers, targets and cost-curve tables are `python benchmarks/serve.py --from-json ... --readme`."""
    from benchmarks.serve import from_json, readme_tables

    points, rates, _, _ = from_json(ROOT / "benchmarks" / "results" / "serve.json")
    for table in readme_tables(points, rates).split("\n\n"):
        assert table.strip() in README
