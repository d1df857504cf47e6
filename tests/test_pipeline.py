"""The whole pipeline without a scheduler (npimage run): results, incremental, idempotence.

Every test that takes `data_root` runs twice: with a local data dir and with an s3:// one
on a moto S3 server (where the source is on S3 too: the demo catalogue uploaded there).
"""

from __future__ import annotations

import csv
import shutil

import pyarrow.parquet as pq
import pytest
from helpers import check_published_run, table_rows

from npimage.cli import main
from npimage.config import Settings
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline
from npimage.storage.warehouse import TABLES


def _ctx(data_dir, source, run_id, mode="full", client="acme"):
    settings = Settings().with_overrides(data_dir=data_dir, fv=False)
    return settings_context(client, str(source), run_id, settings, mode=mode)


_UPLOADED: dict[int, str] = {}


def _source(data_root, small_demo):
    """The demo manifest: local, or uploaded (once) to the bucket of an s3:// data dir."""
    if not data_root.remote:
        return small_demo.manifest
    from npimage.storage.store import location, upload_tree

    if id(data_root) not in _UPLOADED:
        dest = location(data_root("catalogue"))
        upload_tree(small_demo.manifest.parent, dest)
        _UPLOADED[id(data_root)] = f"{dest}/{small_demo.manifest.name}"
    return _UPLOADED[id(data_root)]


@pytest.fixture(scope="module")
def first_run(small_demo, data_root):
    data = data_root("pipeline")
    info = run_pipeline(_ctx(data, _source(data_root, small_demo), "r1"), workers=1,
                        report=False)
    return data, info


def test_planted_duplicates_found_in_band(first_run, small_demo):
    data, info = first_run
    result = check_published_run(data, "acme", small_demo.truth)
    assert result["missed"] == 0, result["missed_rows"]
    assert info["images"] == small_demo.n_images
    assert info["signatures_computed"] == small_demo.n_images


def test_incremental_rerun_computes_nothing_and_keeps_tables(first_run, small_demo, data_root):
    data, _ = first_run
    wh = data
    before = {t: table_rows(wh, t, "acme") for t in TABLES}
    info = run_pipeline(_ctx(data, _source(data_root, small_demo), "r2", "incremental"),
                        workers=1, report=False)
    assert info["signatures_computed"] == 0
    after = {t: table_rows(wh, t, "acme") for t in TABLES}
    assert after == before


def test_same_run_twice_gives_identical_tables(small_demo, data_root):
    data = data_root("same")
    ctx = _ctx(data, small_demo.manifest, "same-run")
    run_pipeline(ctx, workers=1, report=False)
    first = {t: table_rows(data, t, "acme", ()) for t in TABLES}
    run_pipeline(ctx, workers=1, report=False)
    second = {t: table_rows(data, t, "acme", ()) for t in TABLES}
    # computed_at of signatures differs between the two computations; all else is equal
    drop = {"signatures"}
    assert {t: v for t, v in first.items() if t not in drop} == \
        {t: v for t, v in second.items() if t not in drop}
    assert len(first["signatures"]) == len(second["signatures"])


def test_incremental_after_changes(small_demo, tmp_path, data_root):
    """Added, changed and deleted images: only they are recomputed; deletions leave matches."""
    data, full = data_root("d"), data_root("full")
    src = tmp_path / "catalogue"
    shutil.copytree(small_demo.manifest.parent, src)
    manifest = src / "manifest.csv"
    run_pipeline(_ctx(data, manifest, "a"), workers=1, report=False)
    rows = list(csv.DictReader(manifest.open()))
    deleted, changed, source_of_copy = rows[0], rows[1], rows[2]
    (src / changed["uri"]).write_bytes((src / rows[3]["uri"]).read_bytes())  # new content
    shutil.copy(src / source_of_copy["uri"], src / "images" / "new-copy.jpg")
    kept = [r for r in rows if r is not deleted]
    kept.append({"image_id": "new-copy", "product_id": "NEWPROD", "uri": "images/new-copy.jpg",
                 "reference": ""})
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), restval="")
        w.writeheader()
        w.writerows(kept)
    info = run_pipeline(_ctx(data, manifest, "b", "incremental"), workers=1, report=False)
    assert info["signatures_computed"] == 2  # the changed image and the new one
    ids = {r[1] for r in table_rows(data, "images", "acme")}
    assert deleted["image_id"] not in ids
    matches = table_rows(data, "image_matches", "acme")
    assert all(deleted["image_id"] not in (m[1], m[2]) for m in matches)
    assert any(m[1] == "new-copy" and m[2] == source_of_copy["image_id"] and m[7]
               for m in matches)  # found as an identical file
    # and the same tables as a full run over the changed catalogue
    run_pipeline(_ctx(full, manifest, "c"), workers=1, report=False)
    assert table_rows(full, "image_matches", "acme") == matches


def test_cli_run_prints_where_results_are(small_demo, tmp_path, capsys):
    code = main(["run", "--client", "cli", "--source", str(small_demo.manifest), "--data-dir",
                 str(tmp_path), "--no-fv", "--no-report", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"warehouse         {(tmp_path / 'warehouse.duckdb').resolve()}" in out
    assert "image pairs" in out and "rejects" in out
    runs = list((tmp_path / "clients" / "cli" / "runs").iterdir())
    assert pq.read_metadata(runs[0] / "image_matches.parquet").num_rows > 0


def test_cli_clear_error_on_missing_source(tmp_path, capsys):
    code = main(["run", "--client", "x", "--source", str(tmp_path / "nope"), "--data-dir",
                 str(tmp_path), "--no-fv"])
    assert code == 2
    assert "source not found" in capsys.readouterr().err


def test_fv_run_records_the_model_and_reuses_vectors(small_demo, tmp_path):
    """With FV on: dfv on every match, the model id stored, nothing recomputed next time."""
    import duckdb

    settings = Settings().with_overrides(data_dir=tmp_path, fv=True)
    first = run_pipeline(settings_context("fv", str(small_demo.manifest), "f1", settings),
                         workers=1, report=False)
    assert first["signatures_computed"] == small_demo.n_images
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    models = con.execute("SELECT DISTINCT fv_model FROM signatures").fetchall()
    null_dfv = con.execute("SELECT count(*) FROM image_matches WHERE dfv IS NULL").fetchone()[0]
    dims = con.execute("SELECT DISTINCT len(fv) FROM signatures").fetchall()
    con.close()
    assert len(models) == 1 and models[0][0].startswith("efficientnet-lite0@")
    assert null_dfv == 0 and dims == [(1280,)]
    again = run_pipeline(settings_context("fv", str(small_demo.manifest), "f2", settings,
                                          mode="incremental"), workers=1, report=False)
    assert again["signatures_computed"] == 0


def test_report_and_evaluate_read_the_data_dir(first_run, small_demo, data_root):
    """The report and `npimage evaluate` read the warehouse of an s3:// data dir; the
    report is uploaded beside the run files (local data dirs: test_report, test_dag)."""
    if not data_root.remote:
        pytest.skip("local data dirs are covered by test_report and test_dag")
    from npimage import pipeline
    from npimage.quality.evaluate import evaluate, load_truth
    from npimage.storage.layout import Layout
    from npimage.storage.store import location

    data, info = first_run
    ctx = _ctx(data, small_demo.manifest, info["run_id"])
    index = pipeline.report(ctx)
    assert index == str(Layout.of(data).report_dir("acme") / "index.html")
    assert "<html" in location(index).read_text().lower()
    assert evaluate(data, "acme", load_truth(small_demo.truth)) is not None


# -- batch sizing and the run's workers (npimage.ingest.plan, npimage.runner) --------------

def _makespan(sizes: list[int], workers: int, per_batch: float = 4.0, late: float = 0.0
              ) -> float:
    """Finish time of batches handed out in order to the next free worker (1 per image,
    `per_batch` per batch; the first worker starting `late`)."""
    free = [late] + [0.0] * (workers - 1)
    for size in sizes:
        i = free.index(min(free))
        free[i] += size + per_batch
    return max(free)


@pytest.mark.parametrize(("n", "workers"), [(2000, 2), (600, 2), (300, 2), (5000, 8),
                                             (2500, 2), (700, 4), (40, 2), (1, 2)])
def test_local_batches_shrink_at_the_end_so_workers_finish_together(n, workers):
    from npimage.ingest.plan import MIN_TAIL_BATCH, batch_sizes

    equal = batch_sizes(n, 256, 1024)
    sizes = batch_sizes(n, 256, 1024, workers)
    assert sum(sizes) == sum(equal) == n
    assert max(sizes) <= 256 and sizes == sorted(sizes, reverse=True)
    assert len(sizes) <= workers or all(s >= MIN_TAIL_BATCH for s in sizes[:-1])
    assert _makespan(sizes, workers) <= _makespan(equal, workers)
    if n >= 300:  # one worker starting late (or slower) leaves the others less to wait
        assert sizes[-1] <= n / (2 * workers)  # the last round is half batches

        def regrets(cut: list[int]) -> list[float]:
            return [_makespan(cut, workers, late=late) - (n + late) / workers
                    for late in range(0, 400, 5)]

        assert max(regrets(sizes)) <= max(regrets(equal))
        assert sum(regrets(sizes)) < sum(regrets(equal))


def test_local_batches_keep_the_map_limit():
    from npimage.ingest.plan import batch_sizes

    for n in (300_000, 1_000_000):
        sizes = batch_sizes(n, 256, 1024, 2)
        assert len(sizes) <= 1024 and sum(sizes) == n
    assert batch_sizes(2000, 256, 1024) == [256] * 7 + [208]  # the DAG: equal batches


def _count_items(ctx, item: int) -> int:
    """A stage function for the workers: reports `item` images one by one."""
    from npimage.progress import Progress

    with Progress(item, "test", "img") as progress:
        for _ in range(item):
            progress(1)
    return item * 10


def test_workers_count_every_image_on_the_stage_counter(tmp_path):
    from npimage.runner import Workers

    workers = Workers(2)
    workers.start()
    try:
        assert workers.map(_count_items, None, [3, 5, 7, 2]) == [30, 50, 70, 20]
        assert workers.counter.value == 17
        workers.counter.value = 0
        assert workers.map(_count_items, None, [4]) == [40]  # one item: a ready worker
        assert workers.counter.value == 4
    finally:
        workers.kill()
    workers.counter.value = 0
    assert workers.map(_count_items, None, [6]) == [60]  # none running: in this process
    assert workers.counter.value == 6 and workers.pool is None
    from npimage import progress

    assert progress._sink is None  # the run's own later stages show their own progress


def _pid_logged(ctx) -> int:
    """An unmapped stage for a worker: logs a line and a warning, returns its process id."""
    import logging
    import os

    logging.getLogger("npimage").info("stage line %d", 7)
    logging.getLogger("npimage.sub").warning("a warning from %s", "there")
    return os.getpid()


def test_an_on_worker_stage_runs_on_a_worker_and_its_log_lines_show_here(caplog):
    import logging
    import os

    from npimage.runner import Workers
    from npimage.stages import stage

    assert stage("verify").on_worker  # Numba is loaded in the workers, not in the run's process
    workers = Workers(2)
    workers.start()
    try:
        with caplog.at_level(logging.INFO, logger="npimage"):
            pid = workers.call(_pid_logged, None)
        assert pid != os.getpid()
        assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
            ("npimage", logging.INFO, "stage line 7"),
            ("npimage.sub", logging.WARNING, "a warning from there")]
    finally:
        workers.kill()
    assert workers.call(_pid_logged, None) == os.getpid()  # none running: in this process


def test_a_hashes_only_run_loads_no_numba_in_its_own_process():
    """Numba costs ~0.6 s of CPU to load in a fresh process: with FV off, the run's process
    has no stage that needs it (verify runs on a worker, the family stage needs FV)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from npimage import pipeline\n"
            "from npimage.storage.runs import RunContext\n"
            "ctx = RunContext('c', 'r', '/x', 'full', '/d', fv=False, fv_model='m', top_k=5,"
            " threshold=0.9)\n"
            "pipeline.preload(pipeline.later_modules(ctx))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
