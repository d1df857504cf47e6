"""Run settings: one frozen dataclass, filled from defaults, environment and arguments.

Every knob has a sane default so that `npimage run --client C --source PATH` needs
nothing else. Environment variables (prefix `NPIMAGE_`) override defaults; explicit
arguments (CLI flags, DAG params) override both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from npimage.bands import BANDS as BANDS  # re-exported for old imports: use npimage.bands
from npimage.bands import DEFAULT_THRESHOLD
from npimage.storage.store import is_remote, location, scratch_dir

DEFAULT_FV_MODEL = "efficientnet-lite0"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NPIMAGE_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know besides its client and source."""

    #: A local folder (Path) or an fsspec URL such as s3://bucket/npimage (UPath).
    data_dir: Path = field(default_factory=lambda: location(_env("DATA_DIR", "data")))
    fv: bool = field(default_factory=lambda: _env("FV", "1") not in ("0", "false", "no"))
    fv_model: str = field(default_factory=lambda: _env("FV_MODEL", DEFAULT_FV_MODEL))
    weights_file: str | None = field(default_factory=lambda: os.environ.get("NPIMAGE_WEIGHTS"))
    #: Family stage (#18): on when families are known and FV is on; False switches it off.
    families: bool = field(
        default_factory=lambda: _env("FAMILIES", "1") not in ("0", "false", "no"))
    top_k: int = field(default_factory=lambda: int(_env("TOP_K", "10")))
    threshold: float = field(
        default_factory=lambda: float(_env("THRESHOLD", str(DEFAULT_THRESHOLD))))
    batch_size: int = field(default_factory=lambda: int(_env("BATCH_SIZE", "256")))
    max_batches: int = 1024  # Airflow's map-entry limit: batches grow past it
    shard_size: int = field(default_factory=lambda: int(_env("SHARD_SIZE", "200000")))
    block_size: int = field(default_factory=lambda: int(_env("BLOCK_SIZE", "2048")))
    max_pixels: int = field(default_factory=lambda: int(_env("MAX_PIXELS", str(250_000_000))))
    read_timeout: float = field(default_factory=lambda: float(_env("READ_TIMEOUT", "30")))

    @property
    def warehouse_path(self) -> Path:
        """warehouse.duckdb (views for SQL tools; `storage.warehouse.connect` takes it too)."""
        return self.data_dir / "warehouse.duckdb"

    @property
    def model_cache(self) -> Path:
        """Downloaded model weights: under a local data dir, else in this worker's scratch."""
        override = os.environ.get("NPIMAGE_MODEL_CACHE")
        if override:
            return Path(override)
        if is_remote(self.data_dir):
            return scratch_dir() / "models"
        return self.data_dir / "models"

    def with_overrides(self, **kwargs: object) -> Settings:
        """A copy with the non-None keyword arguments applied."""
        clean: dict[str, Any] = {k: v for k, v in kwargs.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = location(str(clean["data_dir"]))
        return replace(self, **clean)

