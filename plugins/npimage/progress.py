"""Progress of long stages: a bar on a terminal, periodic log lines elsewhere (Airflow logs)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger("npimage")

#: A progress callback of a multi-step job (the report): (step name, done, total).
StepProgress = Callable[[str, int, int], None]


class Progress:
    """Counts units of work; call it with the units just done. Use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty() and total > 0:
            from tqdm import tqdm  # only on terminals

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)

    def __call__(self, n: int = 1) -> None:
        self.done += n
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
        log.info("%s: %s %s in %.1fs", self.desc, self.done, self.unit, elapsed)
