"""Variants taking turns in their own processes (benchmarks/turns.py): one runs at a time, in a fixed cycle, and each
chunk's time is its own."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from benchmarks.turns import Turn, paired_laps, take_turns


def stamped_chunks(turn: Turn, out: str, chunks: int, seconds: float) -> None:
    """Sleeps ``seconds`` per chunk and writes when each chunk ran."""
    stamps = []
    turn.begin()
    for _ in range(chunks):
        start = time.monotonic()
        time.sleep(seconds)
        stamps.append((start, time.monotonic()))
        turn.lap()
    Path(out).write_text(json.dumps(stamps))
    turn.finish()


def failing(turn: Turn) -> None:
    turn.begin()
    raise ValueError("bad variant")


def test_one_variant_runs_at_a_time_in_a_fixed_cycle_and_times_only_its_own_chunks(tmp_path: Path) -> None:
    spec = {name: (stamped_chunks, (str(tmp_path / name), 4, seconds)) for name, seconds in (("a", 0.01), ("b", 0.04))}
    times = take_turns(spec, gap=0.05)
    assert [len(t) for t in times.values()] == [4, 4]
    # each chunk's time is its own work: with the other's turn and the gaps it would be >= 0.15 s
    assert all(0.01 <= t < 0.12 for t in times["a"]) and all(0.04 <= t < 0.12 for t in times["b"])
    runs = sorted((start, end, name) for name in "ab" for start, end in json.loads((tmp_path / name).read_text()))
    assert [name for *_, name in runs] == list("abababab")
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in itertools.pairwise(runs))  # never overlapping


def test_a_failing_variant_is_named_and_the_others_are_ended(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="variant 'broken' failed: ValueError: bad variant"):
        take_turns({"broken": (failing, ()), "waiting": (stamped_chunks, (str(tmp_path / "w"), 3, 0.01))})
    assert time.monotonic() - start < 30  # the waiting variant was not left to time out
    assert not (tmp_path / "w").exists()


def test_paired_laps_skip_warm_up_and_keep_the_cycles_both_ran() -> None:
    assert paired_laps({"a": [9.0, 1.0, 2.0, 3.0], "b": [9.0, 2.0, 4.0]}, skip=1) == {"a": [1.0, 2.0], "b": [2.0, 4.0]}
    with pytest.raises(ValueError, match="only 2 chunks per variant; 2 are skipped"):
        paired_laps({"a": [1.0, 2.0]}, skip=2)


def test_the_in_process_clock_times_every_step_after_epoch_0() -> None:
    from benchmarks.mask_overhead import MODELS, fit_variant
    from benchmarks.mask_overhead_in_process import StepClock

    clock = StepClock()
    fit_variant("lenet300", "sgd", "lottery", 2, [clock])
    assert len(clock.times) == MODELS["lenet300"][3]  # epoch 1's batches, each timed from the batch before it
    assert all(t > 0 for t in clock.times)
