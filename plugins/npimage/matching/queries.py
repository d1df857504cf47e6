"""Query selection: which images a run compares against the catalogue.

A full run queries every image. An incremental run queries only what can change a stored
top-k list, provided its match settings equal the baseline run's (else every image again):
new and changed images, plus every image whose stored top-k lost a member (deleted or
changed), since its next-best match is not stored. The other images keep their lists
and only gain the queries that now belong in them (compare runs both ways).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from npimage.matching.scoring import load_weights
from npimage.schemas import SIGNATURES
from npimage.storage.parquet_io import read_parts, read_table

#: Settings that change what matches mean: when one differs from the baseline run's,
#: an incremental run compares every image again.
MATCH_SETTINGS = ("fv", "fv_model", "top_k", "threshold", "weights_file", "weights_digest")


def weights_digest(weights_file: str | None) -> str:
    """Digest of the weights in force: refitting into the same file changes it."""
    return hashlib.sha256(load_weights(weights_file).to_json().encode()).hexdigest()[:16]


def same_match_settings(context: Mapping[str, Any], baseline: Path) -> bool:
    """Whether `context` (with its weights_digest) matches the baseline run's context.json."""
    try:
        old = json.loads((baseline / "context.json").read_text())
    except (OSError, ValueError):
        return False
    return all(old.get(k) == context.get(k) for k in MATCH_SETTINGS)


def incremental_query_ids(fresh: pa.Table, sigs: pa.Table, baseline: Path) -> pa.Array:
    """Image ids to query in an incremental run (see the module docstring).

    fresh: this run's computed signatures; sigs: the run's full signature set;
    baseline: the folder of the run whose image_matches.parquet is kept.
    """
    old = read_parts(baseline / "signatures", SIGNATURES,
                     columns=["image_id", "sha256", "fv_model"])
    old_key = dict(zip(old["image_id"].to_pylist(),
                       zip(old["sha256"].to_pylist(), old["fv_model"].to_pylist(), strict=True),
                       strict=True))
    changed = {i for i, sha, model in zip(fresh["image_id"].to_pylist(),
                                          fresh["sha256"].to_pylist(),
                                          fresh["fv_model"].to_pylist(), strict=True)
               if old_key.get(i) != (sha, model)}
    gone = set(old_key) - set(sigs["image_id"].to_pylist())
    prior = read_table(baseline / "image_matches.parquet",
                       columns=["image_id", "match_image_id"])
    lost = pc.is_in(prior["match_image_id"], pa.array(sorted(changed | gone), pa.string()))
    affected = set(prior.filter(lost)["image_id"].to_pylist()) - gone
    return pa.array(sorted(changed | affected), pa.string())


def query_table(sigs: pa.Table, query_ids: pa.Array | None) -> pa.Table:
    """The query rows: signatures with their row number in `sigs`; None queries them all."""
    queries = sigs.append_column("row", pa.array(range(sigs.num_rows), pa.int64()))
    if query_ids is not None:
        queries = queries.filter(pc.is_in(queries["image_id"], query_ids))
    return queries
