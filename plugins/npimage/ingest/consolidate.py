"""Consolidate: the run's full signature set, cut into shards for compare, and its rejects.

The signature batches of this run plus, in an incremental run, the baseline's signatures
of the unchanged images still in the catalogue. Sorted by image_id, so a row number names
the same image in every shard and in the query table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from npimage.schemas import CATALOG, SIGNATURES
from npimage.storage.parquet_io import concat, list_parts, read_parts, read_table, write_table


def batch_outputs(run_dir: Path, folder: str, schema: pa.Schema) -> pa.Table:
    """This run's outputs of the planned batches only (stale files of older plans ignored).

    A planned batch without its output raises: a missing batch is never silently skipped.
    """
    names = [p.name for p in list_parts(run_dir / "plan", "batch-*.parquet")]
    missing = [n for n in names if not (run_dir / folder / n).exists()]
    if missing:
        raise RuntimeError(f"signature batches not computed: {missing[:5]}")
    return concat([read_table(run_dir / folder / n, schema) for n in names], schema)


def all_signatures(run_dir: Path, catalog: pa.Table, fresh: pa.Table,
                   baseline: Path | None) -> pa.Table:
    """This run's fresh signatures + the baseline's rows of unplanned catalogue images."""
    parts = [fresh]
    if baseline is not None:
        planned = read_parts(run_dir / "plan", CATALOG, "batch-*.parquet", columns=["image_id"])
        unplanned = pc.invert(pc.is_in(catalog["image_id"], planned["image_id"]))
        kept_ids = catalog.filter(unplanned)["image_id"].to_pylist()
        parts.append(read_parts(baseline / "signatures", SIGNATURES, ids=kept_ids))
    return sorted_by_id(concat(parts, SIGNATURES))


def sorted_by_id(sigs: pa.Table) -> pa.Table:
    """`sigs` sorted by image_id; as it is when it is so already (a full run's batches come
    in catalogue order), since sorting copies every thumbnail and detail signature."""
    ids = sigs["image_id"]
    if len(ids) < 2 or pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        return sigs
    return sigs.sort_by("image_id")


def shard_rows(n_signatures: int, shard_size: int, max_shards: int) -> int:
    """Rows per compare shard: shard_size, grown so there are at most max_shards shards."""
    return max(shard_size, math.ceil(n_signatures / max_shards))


def write_shards(sigs: pa.Table, folder: Path, rows: int) -> list[dict[str, int]]:
    """Replace the shards in `folder` by `sigs` cut every `rows` rows (one shard at least).

    Returns one {"shard", "first_row"} per shard: the items compare is mapped over.
    """
    for stale in folder.glob("shard-*.parquet"):
        stale.unlink()
    shards = []
    for i, start in enumerate(range(0, max(sigs.num_rows, 1), rows)):
        write_table(sigs.slice(start, rows), folder / f"shard-{i:05d}.parquet", SIGNATURES)
        shards.append({"shard": i, "first_row": start})
    return shards
