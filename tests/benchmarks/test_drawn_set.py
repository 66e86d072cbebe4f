"""benchmarks/drawn_set.py's digit drawings: which source each file draws, and the halves they fall into."""

from __future__ import annotations

from collections import Counter

import numpy as np

from benchmarks.drawn_set import digit_jobs, held_out_digits


def test_each_source_is_drawn_six_times_and_the_halves_share_none() -> None:
    jobs = digit_jobs(600, np.random.default_rng(0))
    _, labels = held_out_digits()
    assert Counter(job.source for job in jobs) == {k: 6 for k in range(100)}
    assert all(job.label == labels[job.source] for job in jobs)
    dev, report = {job.source for job in jobs[0::2]}, {job.source for job in jobs[1::2]}
    assert len(dev) == len(report) == 50 and not dev & report  # the dev half's sources never reach the report half


def test_the_jobs_are_the_seeds_own() -> None:
    first, again = digit_jobs(20, np.random.default_rng(0)), digit_jobs(20, np.random.default_rng(0))
    assert [(j.source, j.strokes) for j in first] == [(j.source, j.strokes) for j in again]
    assert [j.source for j in first] != [j.source for j in digit_jobs(20, np.random.default_rng(1))]
