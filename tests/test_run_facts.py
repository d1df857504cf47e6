"""A run records the same facts however it is driven: stage by stage as the DAG's tasks
call them (no arguments besides the context), or by `npimage run` (runner.py)."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime

import duckdb
import pytest

from npimage import pipeline
from npimage.config import Settings
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline
from npimage.stages import STAGES, stage


def _ctx(data, source, run_id, mode="full"):
    settings = Settings().with_overrides(data_dir=data, fv=False)
    return settings_context("facts", str(source), run_id, settings, mode=mode)


def _as_dag_tasks(ctx) -> datetime:
    """Each stage called as a DAG task calls it; returns when extract had finished."""
    pipeline.extract(ctx)
    extracted = datetime.now(UTC)
    time.sleep(0.05)
    for batch in pipeline.plan(ctx):
        pipeline.signatures(ctx, batch)
    for shard in pipeline.consolidate(ctx):
        pipeline.compare_shard(ctx, shard)
    pipeline.merge(ctx)
    pipeline.publish(ctx)
    return extracted


def _run_row(data, run_id):
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("SELECT started_at, n_computed FROM runs WHERE run_id = $r",
                           {"r": run_id}).fetchone()
    finally:
        con.close()


@pytest.fixture
def folder(small_demo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((small_demo.manifest.parent / "images").rglob("*.jpg"))[:6]:
        shutil.copy(p, src / p.name)
    return src


def test_stage_by_stage_records_the_real_start_and_only_computed_signatures(folder, tmp_path):
    """Was: a DAG run's started_at was its publish time, and n_computed counted reused
    signatures (an image touched but unchanged is re-read, found equal, and reused)."""
    data = tmp_path / "data"
    before = datetime.now(UTC)
    extracted = _as_dag_tasks(_ctx(data, folder, "d1"))
    started, computed = _run_row(data, "d1")
    assert before <= started <= extracted
    assert computed == 6

    touched = sorted(folder.iterdir())[0]
    os.utime(touched, (time.time() + 60, time.time() + 60))  # new mtime, same bytes
    _as_dag_tasks(_ctx(data, folder, "d2", "incremental"))
    assert _run_row(data, "d2")[1] == 0
    info = pipeline.summary(_ctx(data, folder, "d2", "incremental"))
    assert (info["signatures_computed"], info["signatures_reused"]) == (0, 1)


def test_runner_records_the_same_facts(folder, tmp_path):
    data = tmp_path / "data"
    before = datetime.now(UTC)
    info = run_pipeline(_ctx(data, folder, "c1"), workers=1, report=False)
    started, computed = _run_row(data, "c1")
    assert before <= started and computed == info["signatures_computed"] == 6


def test_the_stage_sequence_is_declared_once():
    assert [s.name for s in STAGES][:3] == ["extract", "plan", "signatures"]
    assert stage("signatures").over == "plan" and stage("compare").over == "consolidate"
    assert all(callable(s.resolve()) for s in STAGES)
    assert not stage("report").required
    with pytest.raises(KeyError, match="no stage 'nosuch'"):
        stage("nosuch")
