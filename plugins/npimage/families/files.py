"""Where the family stage's files live in a run folder: a module without the stage's
libraries (Numba), so that the pipeline can name them when the stage does not run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FamilyFiles:
    """Where the stage's files live in a run folder."""

    run_dir: Path

    @property
    def families(self) -> Path:
        return self.run_dir / "families.parquet"

    @property
    def projection(self) -> Path:
        return self.run_dir / "family" / "projection.npz"

    @property
    def vectors(self) -> Path:
        return self.run_dir / "family" / "vectors.parquet"

    @property
    def state(self) -> Path:
        return self.run_dir / "family" / "state.json"

    @property
    def predictions(self) -> Path:
        return self.run_dir / "family_predictions.parquet"
