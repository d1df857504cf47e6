"""Resume interrupted runs: reuse the signature batches already complete on disk.

A signature batch is a pure function of its catalog rows and the settings that shape a
signature (FV on/off, FV model, pixel limit, SIGNATURE_VERSION). When a batch's two
outputs are written, its counts file `sig_counts/<batch>.json` records that key: it is
the marker of a complete batch. Before computing a batch, the signatures stage looks for
a marker with the same key, first in its own run folder (a retried task, a lost worker)
and then in the client's most recent other runs (a run stopped by Ctrl-C or kill -9 and
started again under a new run id), and copies those outputs instead of computing them
again. A batch killed half-way has no marker, so it is computed again; a marker is never
trusted without both of its files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from npimage.schemas import SIGNATURE_VERSION
from npimage.storage.parquet_io import read_table
from npimage.storage.runs import RunContext, atomic_write_text
from npimage.storage.store import Location, write_bytes_atomic

#: Other run folders of the client searched for complete batches (latest run ids first).
RECENT_RUNS = 3
DONE_DIR = "sig_counts"
OUTPUTS = ("sig_batches", "sig_rejects")
COUNTS = ("computed", "reused", "rejected", "resumed")


def batch_key(ctx: RunContext, batch: Location, max_pixels: int) -> str:
    """Digest of a batch's catalog rows and of the settings its signatures depend on."""
    rows = read_table(batch).to_pylist()
    shape = {"client_id": ctx.client_id, "fv": ctx.fv,
             "fv_model": ctx.fv_model if ctx.fv else None, "max_pixels": max_pixels,
             "version": SIGNATURE_VERSION}
    text = json.dumps([shape, rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _stem(name: str) -> str:
    return PurePosixPath(name).stem


def _complete(run_dir: Location, name: str, key: str) -> dict[str, Any] | None:
    """The marker of batch `name` in `run_dir` when its key matches and both files exist."""
    try:
        done = json.loads((run_dir / DONE_DIR / f"{_stem(name)}.json").read_text())
    except (OSError, ValueError):
        return None
    if done.get("key") != key or not all((run_dir / o / name).is_file() for o in OUTPUTS):
        return None
    return {**{k: int(done.get(k, 0)) for k in COUNTS}, "key": key}


def _recent_runs(ctx: RunContext) -> list[Location]:
    """The client's other run folders, latest run ids first (at most RECENT_RUNS).

    Run ids sort by start time (`cli__<UTC time>`, Airflow's `manual__<time>`); the name
    is used rather than a modification time, which object stores do not keep for folders.
    """
    runs = ctx.run_dir.parent
    if not runs.exists():
        return []
    others = [p for p in runs.iterdir() if p.name != ctx.run_dir.name and p.is_dir()]
    return sorted(others, key=lambda p: p.name, reverse=True)[:RECENT_RUNS]


def _find(ctx: RunContext, key: str) -> tuple[Location, str, dict[str, Any]] | None:
    """(run folder, batch file name, marker) of a complete batch with this key, if any."""
    for run_dir in [ctx.run_dir, *_recent_runs(ctx)]:
        for marker in sorted((run_dir / DONE_DIR).glob("*.json")):
            done = _complete(run_dir, f"{marker.stem}.parquet", key)
            if done is not None:
                return run_dir, f"{marker.stem}.parquet", done
    return None


def _copy(src: Location, dst: Location) -> None:
    write_bytes_atomic(dst, src.read_bytes())  # batch outputs are small (one batch)


def reuse_batch(ctx: RunContext, name: str, key: str) -> dict[str, int] | None:
    """Counts of batch `name` taken over from a complete batch with the same key, or None.

    The outputs are copied into this run's folder (when found in another run), so the
    later stages see this run's files only; the signatures count as `resumed` there.
    """
    found = _find(ctx, key)
    if found is None:
        return None
    run_dir, src_name, done = found
    if str(run_dir) == str(ctx.run_dir) and src_name == name:
        return {k: done[k] for k in COUNTS}
    for out in OUTPUTS:
        _copy(run_dir / out / src_name, ctx.path(f"{out}/{name}"))
    counts = {"computed": 0, "reused": 0, "rejected": done["rejected"],
              "resumed": done["computed"] + done["reused"] + done.get("resumed", 0)}
    mark_done(ctx, name, key, counts)
    return counts


def mark_done(ctx: RunContext, name: str, key: str, counts: dict[str, int]) -> None:
    """Record batch `name`'s counts and key: written after both outputs, it marks the
    batch complete."""
    atomic_write_text(ctx.path(f"{DONE_DIR}/{_stem(name)}.json"),
                      json.dumps({**counts, "key": key}))
