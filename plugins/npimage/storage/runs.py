"""The small context every stage receives, and where its run keeps its files.

A run is identified by (client_id, run_id). Everything it writes lives under its run
folder (`npimage.storage.layout`: `<data_dir>/clients/<client>/runs/<run>/`, local or on
an object store), so a retried task rewrites the same paths, two runs never share a file,
and no task depends on another task's local disk. `current.json` beside the runs names
the published run: the baseline of the next incremental run, changed only by a publish.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from npimage.config import Settings
from npimage.storage.layout import Layout, safe_name
from npimage.storage.store import Location, mkdirs, write_text_atomic

MODES = ("full", "incremental")


def new_run_id() -> str:
    """A sortable run id for runs started outside Airflow."""
    return "cli__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@dataclass(frozen=True)
class RunContext:
    """What identifies a run and how it is configured; small enough for XCom."""

    client_id: str
    run_id: str
    source: str
    mode: str
    data_dir: str
    fv: bool
    fv_model: str
    top_k: int
    threshold: float
    weights_file: str | None = None
    backend: str | None = None
    #: Work sizes and limits, read once from Settings where the run is set up and carried
    #: to every worker (None only in contexts saved before they were carried).
    batch_size: int | None = None
    shard_size: int | None = None
    block_size: int | None = None
    max_pixels: int | None = None
    read_timeout: float | None = None
    families: bool = True  # family stage (#18), when families are known and FV is on
    #: Publish even when most of the last published images disappeared (npimage.guards).
    allow_shrink: bool = False
    #: Largest share of the last published images that may disappear without allow_shrink.
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.client_id or not self.client_id.strip():
            raise ValueError("client_id must not be empty")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.max_shrink <= 1.0:
            raise ValueError(f"max_shrink must be in [0, 1], got {self.max_shrink}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunContext:
        """The context of a dict (XCom, context.json); extra keys such as digests are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def settings(self) -> Settings:
        """The run's settings: what the context carries, not the worker's environment."""
        return Settings().with_overrides(
            data_dir=self.data_dir, fv=self.fv, fv_model=self.fv_model,
            top_k=self.top_k, threshold=self.threshold, weights_file=self.weights_file,
            batch_size=self.batch_size, shard_size=self.shard_size,
            block_size=self.block_size, max_pixels=self.max_pixels,
            read_timeout=self.read_timeout,
            families=self.families,
        )

    @property
    def layout(self) -> Layout:
        return Layout.of(self.data_dir)

    @property
    def client_dir(self) -> Location:
        return self.layout.client_dir(self.client_id)

    @property
    def run_dir(self) -> Location:
        return self.layout.run_dir(self.client_id, self.run_id)

    def path(self, name: str) -> Location:
        """Path of a run file (parents created on a local disk)."""
        p = self.run_dir / name
        mkdirs(p.parent)
        return p

    @property
    def current_pointer(self) -> Location:
        return self.layout.pointer(self.client_id)

    def baseline_dir(self) -> Location | None:
        """Run folder of the last published run of this client, if any (and not this run)."""
        ref = self.layout.read_pointer(self.client_id)
        if ref is None or ref["run_id"] == self.run_id:
            return None
        run_dir = self.layout.run_dir(self.client_id, ref["run_id"])
        return run_dir if run_dir.exists() else None


def atomic_write_text(path: Location, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never a part."""
    write_text_atomic(path, text)


__all__ = ["MODES", "RunContext", "atomic_write_text", "new_run_id", "safe_name"]
