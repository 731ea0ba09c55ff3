"""Variants that take turns: one process per variant, each running a chunk of its work while the others wait.

On a shared machine the speed drifts by ±10% over seconds, so two whole runs timed one after the other differ by
more than a few-percent effect. Taking turns every few tens of milliseconds puts each chunk of one variant next to
a chunk of the other under the same conditions: the ratio of neighbouring chunks is paired at that time scale.

Each variant lives in its own process (spawned: a fresh interpreter, as a user's run has), so the variants do not
share Python state, allocators or thread pools. The coordinator hands the turn round in a fixed cycle (A B A B ...,
or A B C A B C ...: every variant always follows the same other one) and pauses ``gap`` seconds before each hand-over,
so the previous process's OpenMP workers stop spinning before the next one starts.

Child side::

    def work(turn: Turn, *args) -> None:
        turn.begin()                  # waits for the first turn; the clock starts
        for chunk in ...:
            ...                       # one chunk of work
            turn.lap()                # records the chunk's time, hands over, waits, restarts the clock
        turn.finish()                 # sends the recorded times

Parent side: ``take_turns({"dense": (work, args), "lottery": (work, args)})`` returns each variant's chunk times.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

_READY, _LAP, _DONE, _GO = "ready", "lap", "done", "go"


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Turn:
    """The child's end: times its chunks and waits for its turn between them."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.times: list[float] = []
        self._start = 0.0

    def begin(self) -> None:
        self._conn.send(_READY)
        self._wait()

    def lap(self) -> None:
        _synchronize()
        self.times.append(time.perf_counter() - self._start)
        self._conn.send(_LAP)
        self._wait()

    def finish(self) -> None:
        self._conn.send((_DONE, self.times))

    def _wait(self) -> None:
        if self._conn.recv() != _GO:
            raise RuntimeError("the coordinator sent something other than a turn")
        _synchronize()
        self._start = time.perf_counter()


def _child(conn: Connection, work: Callable[..., None], args: Sequence[Any]) -> None:
    try:
        work(Turn(conn), *args)
    except BaseException as err:  # the parent reports it instead of waiting forever
        conn.send(("error", f"{type(err).__name__}: {err}"))
        raise


def take_turns(
    variants: Mapping[str, tuple[Callable[..., None], Sequence[Any]]], gap: float = 0.005
) -> dict[str, list[float]]:
    """Run ``work(turn, *args)`` of every variant in its own process, one chunk at a time in a fixed cycle; returns
    each variant's chunk times (seconds, in order). ``work`` must be importable (the processes are spawned)."""
    context = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    processes = []
    for name, (work, args) in variants.items():
        conns[name], child = context.Pipe()
        processes.append(context.Process(target=_child, args=(child, work, tuple(args)), daemon=True))
        processes[-1].start()
    times: dict[str, list[float]] = {}
    try:
        for name in variants:
            _expect(name, conns[name].recv(), _READY)
        live = list(variants)
        while live:
            for name in list(live):
                time.sleep(gap)
                conns[name].send(_GO)
                message = conns[name].recv()
                if message != _LAP:
                    times[name] = _expect(name, message, _DONE)
                    live.remove(name)
        return {name: times[name] for name in variants}
    finally:
        for process in processes:  # after a failure the others still wait for a turn: end them at once
            process.join(timeout=60 if len(times) == len(variants) else 0)
            if process.is_alive():
                process.kill()


def _expect(name: str, message: Any, kind: str) -> Any:
    if message == kind:
        return None
    if isinstance(message, tuple) and message[0] == kind:
        return message[1]
    if isinstance(message, tuple) and message[0] == "error":
        raise RuntimeError(f"variant {name!r} failed: {message[1]}")
    raise RuntimeError(f"variant {name!r} sent {message!r}, expected {kind!r}")


def paired_laps(times: Mapping[str, list[float]], skip: int = 0) -> dict[str, list[float]]:
    """The chunk times every variant has, after the first ``skip`` (warm-up), cut to the shortest variant's count:
    chunk i of each variant ran in the same cycle of turns."""
    count = min(len(t) for t in times.values())
    if count <= skip:
        raise ValueError(f"only {count} chunks per variant; {skip} are skipped as warm-up")
    return {name: list(t[skip:count]) for name, t in times.items()}
