"""Consolidate writes the run's shards from its batches and the baseline's kept rows, in
image_id order, without holding the heavy columns (detail, thumbnail) of the whole set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from npimage.ingest.consolidate import QUERIES, all_signatures, write_queries, write_shards
from npimage.matching.queries import query_table
from npimage.schemas import CATALOG, SIGNATURES
from npimage.storage.parquet_io import read_parts, write_table

REPO = Path(__file__).resolve().parent.parent


def _rows(ids: list[str], heavy_bytes: int, seed: int) -> pa.Table:
    """Signature rows for `ids` with incompressible detail and thumbnail bytes."""
    rng = np.random.default_rng(seed)
    n = len(ids)

    def blobs() -> list[bytes]:
        return [rng.bytes(heavy_bytes) for _ in range(n)]

    return pa.table({
        "client_id": ["c"] * n, "image_id": ids, "sha256": [f"s{i}" for i in ids],
        "size_bytes": [1] * n, "width": [10] * n, "height": [10] * n,
        "ahash": rng.integers(-2**62, 2**62, n), "dhash": rng.integers(-2**62, 2**62, n),
        "phash": rng.integers(-2**62, 2**62, n),
        "fv": [rng.standard_normal(8).astype(np.float16).tolist() for _ in range(n)],
        "fv_model": ["m"] * n,
        "computed_at": [datetime(2026, 1, 1, tzinfo=UTC)] * n, "detail": blobs(),
        "sig_version": [2] * n, "thumb": blobs(),
    }).cast(SIGNATURES)


def _catalog(ids: list[str]) -> pa.Table:
    return pa.table({name: ids if name == "image_id" else [None] * len(ids)
                     for name in CATALOG.names}).cast(CATALOG)


def _run(root: Path, batches: list[list[str]], heavy_bytes: int,
         baseline: list[list[str]] | None = None) -> tuple[Path, Path | None, pa.Table]:
    """A run folder with planned batches and their signatures, and a baseline run whose
    shards hold `baseline`'s ids; the catalogue is every id of both."""
    run = root / "run"
    every = []
    for i, ids in enumerate(batches):
        write_table(_catalog(ids), run / "plan" / f"batch-{i:05d}.parquet", CATALOG)
        write_table(_rows(ids, heavy_bytes, i), run / "sig_batches" / f"batch-{i:05d}.parquet")
        every += ids
    base = None
    if baseline is not None:
        base = root / "base"
        for i, ids in enumerate(baseline):
            write_table(_rows(ids, heavy_bytes, 100 + i),
                        base / "signatures" / f"shard-{i:05d}.parquet")
            every += ids
    return run, base, _catalog(sorted(set(every)))


def _reference(run: Path, base: Path | None, catalog: pa.Table) -> pa.Table:
    """What consolidate must write, made the plain way: every row in memory, sorted."""
    fresh = read_parts(run / "sig_batches", SIGNATURES)
    parts = [fresh]
    if base is not None:
        old = read_parts(base / "signatures", SIGNATURES)
        fresh_ids = set(fresh["image_id"].to_pylist())
        keep = [i for i in old["image_id"].to_pylist()
                if i not in fresh_ids and i in set(catalog["image_id"].to_pylist())]
        parts.append(old.filter(pc.is_in(old["image_id"], pa.array(keep))))
    return pa.concat_tables(parts).sort_by("image_id")


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_shards_hold_every_row_in_id_order_with_its_own_heavy_columns(
        tmp_path: Path, incremental: bool) -> None:
    ids = [f"img{i:04d}" for i in range(300)]
    if incremental:  # fresh ids spread through the baseline's, one of them recomputed
        fresh = [ids[0:300:7][:20], ids[0:300:7][20:]]
        kept = [i for i in ids if i not in set(fresh[0] + fresh[1])] + [ids[0]]
        baseline = [sorted(kept)[:150], sorted(kept)[150:]]
    else:
        fresh, baseline = [ids[:90], ids[90:200], ids[200:]], None
    run, base, catalog = _run(tmp_path, fresh, 64, baseline)
    sigs = all_signatures(run, catalog, base)
    shards = write_shards(sigs, run / "signatures", rows=70, chunk_rows=16)

    expected = _reference(run, base, catalog)
    written = read_parts(run / "signatures", SIGNATURES, "shard-*.parquet")
    assert written.num_rows == expected.num_rows == len(set(ids))
    assert written.equals(expected)
    assert [s["first_row"] for s in shards] == list(range(0, written.num_rows, 70))
    first = pq.ParquetFile(run / "signatures" / "shard-00000.parquet").metadata
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [16] * 4 + [6]
    assert sigs.fresh().num_rows == sum(len(b) for b in fresh)

    asked = pa.array(expected["image_id"].to_pylist()[1::3])
    write_queries(sigs, query_table(sigs.without_source(), asked), tmp_path / "q.parquet",
                  chunk_rows=16)
    rows = pa.array(range(1, expected.num_rows, 3), pa.int64())
    want = expected.take(rows).append_column("row", rows).select(QUERIES.names)
    assert pq.read_table(tmp_path / "q.parquet").equals(want)


def test_an_empty_set_still_writes_one_empty_shard(tmp_path: Path) -> None:
    run, _, catalog = _run(tmp_path, [[]], 8)
    shards = write_shards(all_signatures(run, catalog, None), run / "signatures", rows=10)
    assert shards == [{"shard": 0, "first_row": 0}]
    assert pq.read_table(run / "signatures" / "shard-00000.parquet").num_rows == 0


_PEAK = """
import json, sys
from pathlib import Path
import pyarrow as pa
from npimage.ingest.consolidate import all_signatures, write_shards
from npimage.schemas import CATALOG
from npimage.storage.parquet_io import read_table
run, base = Path(sys.argv[1]), Path(sys.argv[2])
sigs = all_signatures(run, read_table(run.parent / "catalog.parquet", CATALOG), base)
write_shards(sigs, run / "signatures", rows=10**6, chunk_rows=16)
print(json.dumps({"peak": pa.default_memory_pool().max_memory(), "rows": sigs.num_rows}))
"""


def test_consolidate_holds_a_few_row_groups_not_the_whole_set(tmp_path: Path) -> None:
    """~240 MB of details and thumbnails in 16 batches and 8 baseline shards (10 MB each)
    go into one shard while Arrow's peak stays under a quarter of that: what a
    million-image client has of them (~32 GB) never has to fit in memory."""
    heavy = 128 * 1024  # bytes of each of detail and thumbnail
    ids = [f"img{i:04d}" for i in range(960)]
    fresh = [ids[i:i + 40] for i in range(0, 640, 40)]
    baseline = [ids[i:i + 40] for i in range(640, 960, 40)]
    run, base, catalog = _run(tmp_path, fresh, heavy, baseline)
    write_table(catalog, tmp_path / "catalog.parquet", CATALOG)
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    done = subprocess.run([sys.executable, "-c", _PEAK, str(run), str(base)], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    total = len(ids) * 2 * heavy
    assert result["rows"] == len(ids)
    assert pq.read_metadata(run / "signatures" / "shard-00000.parquet").num_rows == len(ids)
    assert result["peak"] < total / 4, (result["peak"], total)
