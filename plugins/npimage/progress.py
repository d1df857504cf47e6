"""Progress of long stages: a bar on a terminal, periodic log lines elsewhere (Airflow logs).

A DAG task shows its own progress (`Progress`). Under `npimage run` a mapped stage runs in
worker processes, each item (a batch) with its own `Progress`: there a process-wide sink is
set (`set_sink`), the items' counts go to one counter shared with the run's process, and
that process shows one bar for the whole stage (`StageBar`): images/s and time left.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("npimage")

#: A progress callback of a multi-step job (the report): (step name, done, total).
StepProgress = Callable[[str, int, int], None]

#: Seconds between two progress lines where there is no terminal (logs, Airflow).
LOG_EVERY = float(os.environ.get("NPIMAGE_PROGRESS_EVERY", "5"))

#: Where `Progress` sends its counts instead of showing them (see `set_sink`); None: shown.
_sink: Callable[[int], None] | None = None


def set_sink(sink: Callable[[int], None] | None) -> None:
    """Send every `Progress` count of this process to `sink` (None: back to bars and logs).

    Set in `npimage run`'s worker processes (and in its own process while it runs a mapped
    stage itself), so that one bar per stage shows the work of every process.
    """
    global _sink
    _sink = sink


class Counter(Protocol):
    """A shared integer: multiprocessing's Value('q') (`.value`, `.get_lock()`)."""

    value: int

    def get_lock(self) -> Any: ...


def counter_sink(counter: Counter) -> Callable[[int], None]:
    """A sink adding each count to a shared counter (atomic across processes)."""
    def add(n: int) -> None:
        with counter.get_lock():
            counter.value += n
    return add


class Progress:
    """Counts units of work; call it with the units just done. Use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = LOG_EVERY
                 ) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        self.sink = _sink  # a stage bar elsewhere shows this work
        if self.sink is None and sys.stderr.isatty() and total > 0:
            from tqdm import tqdm  # only on terminals

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self.sink is not None:
            self.sink(n)
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log()

    def _log(self) -> None:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        pct = f"{100 * self.done / self.total:5.1f}%" if self.total else ""
        log.info("%s: %s/%s %s %s (%.0f %s/s)", self.desc, self.done, self.total, self.unit, pct,
                 rate, self.unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elapsed = time.monotonic() - self.start
        log.log(logging.DEBUG if self.sink else logging.INFO, "%s: %s %s in %.1fs", self.desc,
                self.done, self.unit, elapsed)


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


class StageBar:
    """One stage's progress read from a shared counter: a bar on a terminal (units/s, time
    left), else a log line every `every` seconds; a closing line with the stage's rate.

    A thread polls the counter, so the workers only add to it (one locked add per image).
    """

    def __init__(self, counter: Counter, total: int, desc: str, unit: str = "img",
                 every: float = LOG_EVERY, poll: float = 0.2, tty: bool | None = None) -> None:
        self.counter, self.total, self.desc, self.unit = counter, total, desc, unit
        self.every, self.poll = every, min(poll, every)
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.start = self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.bar: Any = None
        if self.tty and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False,
                            unit_scale=total >= 1_000_000, dynamic_ncols=True)

    @property
    def done(self) -> int:
        return int(self.counter.value)

    def __enter__(self) -> StageBar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self.bar is not None:
            self.bar.close()
        elapsed = time.monotonic() - self.start
        if self.done:  # a stage with nothing to do (reading off) says nothing
            log.info("%s: %d %s in %.1fs (%.0f %s/s)", self.desc, self.done, self.unit,
                     elapsed, _rate(self.done, elapsed), self.unit)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self._update()
            now = time.monotonic()
            if self.bar is None and now - self.last >= self.every:
                self.last = now
                self._line()

    def _update(self) -> None:
        if self.bar is not None:
            self.bar.update(min(self.done, self.total) - self.bar.n)

    def _line(self) -> None:
        """`signatures: 1200/2000 img (60%), 163 img/s, 5 s left`."""
        done = self.done
        if not done:
            log.info("%s: 0/%d %s, starting", self.desc, self.total, self.unit)
            return
        rate = _rate(done, time.monotonic() - self.start)
        left = f", {(self.total - done) / rate:.0f} s left" if rate and done < self.total else ""
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        log.info("%s: %d/%d %s%s, %.0f %s/s%s", self.desc, done, self.total, self.unit, pct,
                 rate, self.unit, left)
