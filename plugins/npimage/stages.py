"""The stage sequence of a run, declared once: the DAG and `npimage run` both follow it.

Each stage is a function of `npimage.pipeline` taking the run context, and for a mapped
stage one item of an earlier stage's output (a batch path, a shard). Stages run in the
order of STAGES; each starts when the one before it is done.

    extract -> plan -> signatures(batch) x B (and their codes) -> consolidate
            -> compare(shard) x S -> verify -> merge -> families -> plan_text
            -> read_text(batch) x T -> publish -> report

This module imports nothing heavy (the DAG file reads it at parse time): the stage
functions are looked up by name only when a stage runs. To add a stage, write its
function in `npimage.pipeline` (thin: it calls the library) and insert one `Stage` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    name:     task id in the DAG, label in logs.
    function: name of the stage function in `npimage.pipeline`.
    over:     for a mapped stage, the earlier stage whose output (a list) it runs over,
              one call (one DAG task instance, one worker job) per item.
    required: False for a stage whose failure must not fail `npimage run` once the results
              are published (the report); the DAG still shows it as a failed task.
    on_worker: under `npimage run`, an unmapped stage run by one of the run's worker
              processes while they are up (its log lines shown by the run's process): for a
              stage whose libraries are warm there and cold here (verify: Numba's compiled
              kernels, which cost ~0.6 s of CPU to load in a fresh process, and OpenCV).
    """

    name: str
    function: str
    over: str | None = None
    required: bool = True
    on_worker: bool = False

    @property
    def mapped(self) -> bool:
        return self.over is not None

    def resolve(self) -> Callable[..., Any]:
        """The stage function (imports `npimage.pipeline` on first use)."""
        fn: Callable[..., Any] = getattr(importlib.import_module("npimage.pipeline"),
                                         self.function)
        return fn


STAGES: tuple[Stage, ...] = (
    Stage("extract", "extract"),
    Stage("plan", "plan"),
    Stage("signatures", "signatures", over="plan"),
    Stage("consolidate", "consolidate"),
    Stage("compare", "compare_shard", over="consolidate"),
    # close pairs checked in detail (npimage.matching.verify), where Numba is loaded already
    Stage("verify", "verify", on_worker=True),
    Stage("merge", "merge"),
    Stage("families", "families"),
    Stage("plan_text", "plan_text"),  # pack reading: OCR of the images in close pairs
    Stage("read_text", "read_text", over="plan_text"),
    Stage("publish", "publish"),
    Stage("report", "report", required=False),
)


def stage(name: str) -> Stage:
    """The declared stage of that name (KeyError when there is none)."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {[s.name for s in STAGES]}")


def _check(stages: tuple[Stage, ...]) -> None:
    """A mapped stage maps over an earlier stage; names are unique."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage {s.name!r} declared twice")
        if s.over is not None and s.over not in seen:
            raise ValueError(f"stage {s.name!r} maps over {s.over!r}, which does not run before it")
        if s.over is not None and s.on_worker:
            raise ValueError(f"stage {s.name!r}: a mapped stage runs on the workers already")
        seen.add(s.name)


_check(STAGES)
