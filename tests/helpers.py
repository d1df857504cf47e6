"""Assertions on published runs, shared by the pipeline and DAG tests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from npimage.bands import LABELS

BAND_RANK = {name: i for i, name in enumerate(LABELS)}


def connect(warehouse: Path | str) -> duckdb.DuckDBPyConnection:
    """The warehouse of a data dir (local or s3://) or of its warehouse.duckdb."""
    from npimage.storage.warehouse import connect as connect_warehouse

    return connect_warehouse(str(warehouse))


def table_rows(warehouse: Path | str, table: str, client: str,
               drop: tuple[str, ...] = ("run_id",)):
    """Rows of a warehouse table for a client, sorted, without run-specific columns."""
    con = connect(warehouse)
    try:
        cols = [c for c in con.table(table).columns if c not in drop]
        rows = con.execute(
            f"SELECT {', '.join(cols)} FROM {table} WHERE client_id = $c ORDER BY ALL",
            {"c": client}).fetchall()
    finally:
        con.close()
    return rows


def check_published_run(warehouse: Path | str, client: str, truth: Path) -> dict[str, int]:
    """The invariants every run must hold, and the planted duplicates found in band."""
    con = connect(warehouse)
    try:
        pairs = {(a, b): band for a, b, band in con.execute(
            "SELECT image_id, match_image_id, band FROM image_matches WHERE client_id = $c",
            {"c": client}).fetchall()}
        n_images = con.execute("SELECT count(*) FROM images WHERE client_id = $c",
                               {"c": client}).fetchone()[0]
    finally:
        con.close()
    assert n_images > 0
    assert pairs, "no image matches at all"
    assert all(a != b for a, b in pairs), "self-match"
    assert all((b, a) in pairs for a, b in pairs), "a pair is missing one direction"
    with truth.open(newline="") as fh:
        planted = [r for r in csv.DictReader(fh) if r["expected_band"]]
    assert planted
    missed = []
    for r in planted:
        band = pairs.get((r["group_id"], r["image_id"]))
        if band is None or BAND_RANK[band] > BAND_RANK[r["expected_band"]]:
            missed.append((r["image_id"], r["kind"], band))
    return {"planted": len(planted), "missed": len(missed), "missed_rows": missed}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            prefix: tuple[str, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    """`npimage ARGS` as a real process, through the command's entry point (npimage.launch;
    this checkout's code first on the path);
    `prefix` is a command the process runs under (e.g. setpriv)."""
    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (plugins, full.get("PYTHONPATH")) if p)
    return subprocess.run([*prefix, sys.executable, "-m", "npimage.launch", *args], env=full,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
