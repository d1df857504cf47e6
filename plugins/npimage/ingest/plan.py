"""Plan: which catalogue images need signatures this run, cut into batches.

Full mode recomputes every image. Incremental mode compares the catalogue with the last
published run: an image whose size and modification time are unchanged (and whose stored
signature has the FV this run needs) is skipped without reading it; the signature stage
then reads the others and still reuses a stored signature when size + sha256 show the
bytes are unchanged. Images that left the catalogue simply are not carried over.
Batches are sized so that there are never more than `max_batches` of them (Airflow's
limit on mapped task instances). For `npimage run`, which knows its worker processes, the
batches are shared evenly and the last ones are smaller (`batch_sizes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from npimage.schemas import CATALOG, SIGNATURES
from npimage.storage.parquet_io import read_table, write_table


@dataclass(frozen=True)
class Plan:
    """Batches to compute (Parquet files of catalog rows) and what was skipped."""

    batches: list[str]
    n_todo: int
    n_skipped: int


def model_matches(stored: str | None, wanted: str) -> bool:
    """True when a stored fv_model identity was made by the model `wanted`.

    `wanted` is an exact model_id, or a prefix ending in "@" or "-" (see
    npimage.fv.models.model_id_prefix), which names the spec and, where known, its weights.
    """
    if not stored:
        return False
    if wanted.endswith(("@", "-")):
        return stored.startswith(wanted)
    return stored == wanted or stored.startswith(wanted + "@")


def unchanged_mask(catalog: pa.Table, prior_catalog: pa.Table, prior_sigs: pa.Table,
                   fv: bool, fv_model: str) -> list[bool]:
    """Per catalog row: may its stored signature be kept without reading the file?"""
    prior = {
        r["image_id"]: (r["uri"], r["size_bytes"], r["modified_at"])
        for r in prior_catalog.select(["image_id", "uri", "size_bytes", "modified_at"]).to_pylist()
    }
    models = dict(zip(prior_sigs["image_id"].to_pylist(), prior_sigs["fv_model"].to_pylist(),
                      strict=True))  # fv_model is set exactly when the row has a vector
    stale = set(prior_sigs.filter(pc.invert(prior_sigs["detail_ok"]))["image_id"].to_pylist()
                ) if "detail_ok" in prior_sigs.column_names else set()
    keep = []
    for row in catalog.select(["image_id", "uri", "size_bytes", "modified_at"]).to_pylist():
        key = (row["uri"], row["size_bytes"], row["modified_at"])
        # unknown sizes (database sources) compare as equal: then modified_at decides
        same = (row["image_id"] in models and prior.get(row["image_id"]) == key
                and row["modified_at"] is not None)
        if same and fv:
            same = model_matches(models[row["image_id"]], fv_model)
        if same and row["image_id"] in stale:  # detail signature of an older version
            same = False
        keep.append(same)
    return keep


def _prior_signature_keys(folder: Path) -> pa.Table:
    """image_id, fv_model and detail_ok (a signature of this version, detail included) of
    stored signatures; the detail bytes are measured by the reader, never held."""
    from npimage.ingest.signatures import current_expression
    from npimage.storage.parquet_io import list_parts
    from npimage.storage.store import arrow

    files = list_parts(folder, "*.parquet")
    if not files:
        return pa.table({"image_id": pa.array([], pa.string()),
                         "fv_model": pa.array([], pa.string()),
                         "detail_ok": pa.array([], pa.bool_())})
    ok = current_expression()
    fs, _ = arrow(files[0])
    dataset = ds.dataset([arrow(p)[1] for p in files], schema=SIGNATURES, format="parquet",
                         filesystem=fs)
    return dataset.to_table(columns={"image_id": ds.field("image_id"),
                                     "fv_model": ds.field("fv_model"), "detail_ok": ok})


def batch_size_for(n: int, batch_size: int, max_batches: int) -> int:
    """The configured batch size, grown so that n images make at most max_batches batches."""
    return max(batch_size, math.ceil(n / max_batches)) if n else batch_size


#: The smallest batch of the halved last round: below it the per-batch cost (two files
#: written, a task handed to a worker: ~5-15 ms, a few images' work) outweighs the wait
#: it saves.
MIN_TAIL_BATCH = 32


def _cut(n: int, size: int) -> list[int]:
    return [min(size, n - start) for start in range(0, n, size)]


def batch_sizes(n: int, batch_size: int, max_batches: int, workers: int | None = None
                ) -> list[int]:
    """How n images are cut into batches, in order.

    Without `workers` (the DAG, whose workers are not known here): equal batches of
    `batch_size_for`. With `workers` (`npimage run` hands batches out in order, each to the
    next free worker): as many equal batches as a multiple of the workers (each worker gets
    the same share), no larger than that size, and the last round cut in halves, so that a
    worker that is slower or started later leaves the others at most half a batch to wait.
    Never more than max_batches batches.
    """
    full = batch_size_for(n, batch_size, max_batches)
    equal = _cut(n, full)
    if not workers or workers < 2 or n == 0:
        return equal
    rounds = math.ceil(math.ceil(n / full) / workers)
    size = math.ceil(n / (rounds * workers))
    sizes = _cut(n, size)
    if len(sizes) >= workers and size >= 2 * MIN_TAIL_BATCH:
        last = sizes[-workers:]
        halves = [h for s in last for h in (math.ceil(s / 2), s // 2) if h]
        sizes = sizes[:-workers] + sorted(halves, reverse=True)
    return sizes if len(sizes) <= max_batches else equal


def plan_batches(catalog_path: Path, baseline: Path | None, out_dir: Path, *, incremental: bool,
                 fv: bool, fv_model: str, batch_size: int, max_batches: int = 1024,
                 workers: int | None = None) -> Plan:
    """Write the batches of images needing signatures into out_dir and list them."""
    catalog = read_table(catalog_path, CATALOG)
    if incremental and baseline is not None:
        if fv:  # names the weights too: new weights mean new vectors
            from npimage.fv.models import model_id_prefix

            fv_model = model_id_prefix(fv_model)
        keep = unchanged_mask(catalog, read_table(baseline / "catalog.parquet", CATALOG),
                              _prior_signature_keys(baseline / "signatures"), fv, fv_model)
        todo = catalog.filter(pa.array([not k for k in keep], pa.bool_()))
    else:
        todo = catalog
    for stale in out_dir.glob("batch-*.parquet"):  # a retried plan starts clean
        stale.unlink()
    batches, start = [], 0
    for i, size in enumerate(batch_sizes(todo.num_rows, batch_size, max_batches, workers)):
        path = write_table(todo.slice(start, size), out_dir / f"batch-{i:05d}.parquet")
        batches.append(str(path))
        start += size
    return Plan(batches, todo.num_rows, catalog.num_rows - todo.num_rows)
