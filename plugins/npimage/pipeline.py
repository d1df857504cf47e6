"""The stage functions of a run, as functions of a RunContext: what the DAG tasks and
`npimage run` call, in the order declared once in npimage.stages.STAGES.

Each function only orchestrates: it finds the run's files and calls the library
(ingest/, matching/, storage/). Each stage reads the files of the stages before it from
the run folder and writes its own, replacing rather than appending, so any stage can be
retried and gives the same files. Only small values (paths, counts) are returned.

    extract -> plan -> signatures(batch) x B -> consolidate -> compare(shard) x S
            -> merge (image matches + product roll-up) -> publish -> report
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from npimage import resume
from npimage.bands import LABELS
from npimage.config import Settings
from npimage.families.files import FamilyFiles
from npimage.fv import FeatureExtractor, load_extractor
from npimage.guards import Shrink, check_shrink
from npimage.ingest.consolidate import (
    all_signatures,
    batch_outputs,
    shard_rows,
    write_queries,
    write_shards,
)
from npimage.ingest.extract import extract_catalog, screen_catalog_file
from npimage.ingest.plan import plan_batches
from npimage.matching import compare as cmp
from npimage.matching.queries import (
    incremental_query_ids,
    query_table,
    same_match_settings,
    weights_digest,
)
from npimage.matching.scoring import Scorer, load_weights
from npimage.orchestration.connection import is_backend_url, resolve_db
from npimage.preflight import check_run, where
from npimage.progress import Progress
from npimage.reading import stage as reading
from npimage.reading.stage import parse_read
from npimage.redact import redact_dsn
from npimage.schemas import CATALOG, REJECTS, SIGNATURES
from npimage.storage.parquet_io import (
    concat,
    list_parts,
    num_rows,
    read_parts,
    read_table,
    write_table,
)
from npimage.storage.runs import RunContext, atomic_write_text
from npimage.storage.store import (
    local_copy,
    local_file,
    local_output,
    local_output_dir,
    location,
)
from npimage.storage.warehouse import display as warehouse_display
from npimage.storage.warehouse import publish as publish_warehouse

log = logging.getLogger("npimage")


def public_context(ctx: RunContext) -> dict[str, Any]:
    """The run context as stored in files and XCom: DSN passwords removed (npimage.redact)."""
    return {**ctx.to_dict(), "source": redact_dsn(ctx.source), "backend": redact_dsn(ctx.backend)}


def backend_of(ctx: RunContext) -> str | None:
    """The backend the run loads into (its --backend, else a backend source), or None."""
    return ctx.backend or (ctx.source if is_backend_url(ctx.source) else None)


def record_start(ctx: RunContext, started_at: datetime) -> None:
    """Mark the run 'running' in the backend's npimage_run from its start (if a backend).

    Called by extract, after the client's run lock is taken: any other 'running' row of
    the client belongs to a run that was killed, and is marked failed (abandoned).
    """
    url = backend_of(ctx)
    if url:
        from npimage import backend
        from npimage.backend.runs import abandon_other_runs

        db = resolve_db(url)
        backend.record_run_start(db, ctx.client_id, ctx.run_id,
                                 {"mode": ctx.mode, "started_at": started_at})
        if abandoned := abandon_other_runs(db, ctx.client_id, ctx.run_id):  # we hold the lock
            log.warning("marked %d killed run(s) of %s failed in npimage_run", abandoned,
                        ctx.client_id)


def record_failure(ctx: RunContext, error: BaseException | str) -> None:
    """Mark the run 'failed' with its error in the backend, whichever stage failed.

    Never raises (the run's own error matters more); the message is redacted.
    """
    url = backend_of(ctx)
    if not url:
        return
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    try:
        from npimage import backend

        backend.record_run_end(resolve_db(url), ctx.client_id, ctx.run_id, "failed",
                               {"mode": ctx.mode}, error=redact_dsn(text))
    except Exception as exc:  # the backend may be what failed
        log.warning("run %s not marked failed in the backend: %s", ctx.run_id,
                    redact_dsn(str(exc)))


# -- extract -----------------------------------------------------------------------------

def _started_at(ctx: RunContext, started_at: datetime | None = None) -> str:
    """The run's start: kept from an earlier attempt of extract in this run folder, else
    the time the caller gives (a DAG run's start date), else now."""
    try:
        return str(json.loads(ctx.path("context.json").read_text())["started_at"])
    except (OSError, ValueError, KeyError):
        return (started_at or datetime.now(UTC)).isoformat()


def _match_context(ctx: RunContext) -> dict[str, Any]:
    """The context as stored in context.json: no DSN password (npimage.redact)."""
    return {**public_context(ctx), "weights_digest": weights_digest(ctx.weights_file)}


def extract(ctx: RunContext, started_at: datetime | None = None) -> dict[str, Any]:
    """Catalogue the source into catalog.parquet (+ extract rejects); save the context.

    context.json records the run's settings (without passwords), weights digest and real
    start time, which publish reads back: the DAG and `npimage run` record the same facts.
    The backend's npimage_run row says 'running' from here on.
    """
    check_run(ctx, data_dir=False)  # the databases answer before anything is computed
    context = {**_match_context(ctx), "started_at": _started_at(ctx, started_at)}
    atomic_write_text(ctx.path("context.json"), json.dumps(context, indent=2))
    record_start(ctx, datetime.fromisoformat(context["started_at"]))
    if is_backend_url(ctx.source):
        from npimage import backend  # psycopg2 only when needed

        baseline = ctx.baseline_dir()
        with local_copy(baseline / "catalog.parquet" if baseline else None) as previous, \
                local_output(ctx.path("catalog.parquet")) as catalog:
            ext = backend.extract_catalog(
                resolve_db(ctx.source), ctx.client_id, catalog, previous_catalog=previous,
                incremental=ctx.mode == "incremental" and baseline is not None)
        atomic_write_text(ctx.path("backend_extract.json"), json.dumps(ext.counts()))
        backend.product_names(resolve_db(ctx.source), ctx.client_id,
                              ctx.path("product_names.parquet"))
        from npimage.backend.families import extract_families

        extract_families(resolve_db(ctx.source), ctx.client_id, ctx.path("families.parquet"))
        n_rejects = screen_catalog_file(ctx.path("catalog.parquet"),
                                        ctx.path("extract_rejects.parquet"), ctx.client_id)
        log.info("extract: %d images from the backend (%d changed, %d deleted), %d rejected",
                 ext.n_images - n_rejects, ext.n_changed, ext.n_deleted, n_rejects)
        return {"images": ext.n_images - n_rejects, "rejects": n_rejects}
    result = extract_catalog(ctx.client_id, ctx.source, ctx.path("catalog.parquet"),
                             ctx.path("extract_rejects.parquet"), ctx.path("families.parquet"))
    log.info("extract: %d images, %d rejected", result.n_images, result.n_rejects)
    return {"images": result.n_images, "rejects": result.n_rejects}


# -- plan --------------------------------------------------------------------------------

def _baseline_for_increment(ctx: RunContext) -> Path | None:
    """The baseline run folder when this run may reuse it (incremental, same settings)."""
    baseline = ctx.baseline_dir()
    if ctx.mode != "incremental" or baseline is None:
        return None
    return baseline


def _reusable_matches(ctx: RunContext) -> Path | None:
    """The baseline whose matches this run keeps: incremental with the same match settings."""
    baseline = _baseline_for_increment(ctx)
    if baseline is None or not same_match_settings(_match_context(ctx), baseline):
        return None
    return baseline


def plan(ctx: RunContext, workers: int | None = None) -> list[str]:
    """Batches (Parquet paths) of images that need signatures this run.

    `workers`: the worker processes of `npimage run`, which then gets shrinking batches at
    the end so that its workers finish together (npimage.ingest.plan.batch_sizes); the DAG
    passes none and gets equal batches.
    """
    settings = ctx.settings
    result = plan_batches(ctx.path("catalog.parquet"), _baseline_for_increment(ctx),
                          ctx.run_dir / "plan", incremental=ctx.mode == "incremental",
                          fv=ctx.fv, fv_model=ctx.fv_model, batch_size=settings.batch_size,
                          max_batches=settings.max_batches, workers=workers)
    log.info("plan: %d images to compute in %d batches, %d unchanged", result.n_todo,
             len(result.batches), result.n_skipped)
    return result.batches


#: Modules that only the per-image stages need (loaded by the workers), and those that only
#: the stages after them need (loaded by the run's process while the workers compute).
#: Compare and verify run on the workers (npimage.runner), and the family stage needs FV:
#: its modules (Numba's among them) are loaded here only with FV on (`later_modules`).
WORKER_MODULES = ("npimage.ingest.signatures", "npimage.reading.codes")
LATER_MODULES = ("npimage.matching.merge", "npimage.review.store")
FV_LATER_MODULES = ("npimage.families.stage",)


def later_modules(ctx: RunContext) -> tuple[str, ...]:
    """What the run's process loads while the workers compute signatures: what its later
    stages need, Numba's modules only when FV is on (see FV_LATER_MODULES)."""
    return LATER_MODULES + FV_LATER_MODULES if ctx.fv else LATER_MODULES


def preload(modules: tuple[str, ...]) -> None:
    """Import `modules` now (ahead of the stage that needs them); a failure is left to the
    stage's own import, which reports it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the stage's own import raises it properly
            log.debug("preload of %s failed: %s", name, exc)


def work_units(ctx: RunContext, stage_name: str, items: list[Any]) -> tuple[int, str]:
    """The work a mapped stage's items hold, for its progress bar: (count, unit).

    Compare shards count pairs (queries x shard rows, what compare_shard reports); the
    other mapped stages are over batches of images.
    """
    if stage_name == "compare":
        queries = num_rows(ctx.path("queries.parquet"))
        return sum(queries * num_rows(ctx.path(f"signatures/shard-{s['shard']:05d}.parquet"))
                   for s in items), "pairs"
    return sum(num_rows(item) for item in items), "img"


# -- signatures --------------------------------------------------------------------------

@cache
def _extractor(spec: str, cache_dir: str) -> FeatureExtractor:
    return load_extractor(spec, Path(cache_dir))


def load_fv_model(ctx: RunContext) -> None:
    """Load this run's FV model in this process now (TensorFlow and the weights, once per
    process): `npimage run`'s workers do it while extract runs, not at their first batch."""
    if ctx.fv:
        _extractor(ctx.fv_model, str(ctx.settings.model_cache))


def signatures(ctx: RunContext, batch: str) -> dict[str, int]:
    """Signatures and codes of one planned batch -> sig_batches/, sig_rejects/, sig_counts/
    and reading/.

    A batch already complete on disk with the same rows and settings (this run's, after
    a retry or a lost worker, or an interrupted run's of the client) is taken over, not
    computed again (npimage.resume); its signatures count as `resumed`. With codes on,
    the images' codes are read from the same decode (npimage.reading.stage.BatchCodes);
    a resumed batch whose codes are not on disk has them read by `read_codes` here, so the
    codes cost no task of their own (one Airflow task per batch, not two).
    """
    settings = ctx.settings
    name = location(batch).name
    key = resume.batch_key(ctx, location(batch), settings.max_pixels)
    done = resume.reuse_batch(ctx, name, key)
    if done is not None:
        log.info("signatures %s: complete on disk, %d resumed", name, done["resumed"])
        read_codes(ctx, batch)
        return done
    from npimage.ingest.signatures import compute_batch  # Pillow, decoders: workers only

    extractor = _extractor(ctx.fv_model, str(settings.model_cache)) if ctx.fv else None
    baseline = _baseline_for_increment(ctx)
    codes = reading.batch_codes(ctx, location(batch), key)  # read from the same decode
    n = num_rows(batch)
    with Progress(n, f"signatures {name}", "img") as progress:
        result = compute_batch(
            location(batch), baseline / "signatures" if baseline else None,
            ctx.path(f"sig_batches/{name}"), ctx.path(f"sig_rejects/{name}"),
            extractor=extractor, max_pixels=settings.max_pixels,
            read_timeout=settings.read_timeout, progress=progress, codes=codes)
    if codes is not None:  # before the batch's marker: a resumed batch finds them
        codes.done()
    counts = {**result.as_dict(), "resumed": 0}
    resume.mark_done(ctx, name, key, counts)  # after both outputs: marks the batch complete
    return counts


# -- consolidate -------------------------------------------------------------------------

def _guard_shrink(ctx: RunContext, sigs: pa.Table, n_rejects: int) -> None:
    """Stop (ShrinkRefused) before publishing far fewer images than the published run."""
    published = ctx.baseline_dir()
    old = (read_parts(published / "signatures", SIGNATURES, columns=["image_id"])["image_id"]
           if published else pa.array([], pa.string()))
    lost = len(old) - pc.sum(pc.is_in(old, sigs["image_id"])).as_py() if len(old) else 0
    check_shrink(Shrink(published=len(old), usable=sigs.num_rows, lost=lost),
                 client_id=ctx.client_id, allow_shrink=ctx.allow_shrink,
                 max_shrink=ctx.max_shrink, rejects=n_rejects)


def consolidate(ctx: RunContext) -> list[dict[str, int]]:
    """The run's full signature set in shards, its rejects and its queries; returns the shards.

    See npimage.ingest.consolidate (signatures, shards) and npimage.matching.queries.
    """
    settings = ctx.settings
    catalog = read_table(ctx.path("catalog.parquet"), CATALOG)
    sigs = all_signatures(ctx.run_dir, catalog, _baseline_for_increment(ctx))
    rejects = concat([read_table(ctx.path("extract_rejects.parquet"), REJECTS),
                      batch_outputs(ctx.run_dir, "sig_rejects", REJECTS)], REJECTS)
    write_table(rejects, ctx.path("rejects.parquet"), REJECTS)
    light = sigs.without_source()
    _guard_shrink(ctx, light, rejects.num_rows)

    baseline = _reusable_matches(ctx)
    query_ids = incremental_query_ids(sigs.fresh(), light, baseline) if baseline else None
    queries = query_table(light, query_ids)
    write_queries(sigs, queries, ctx.path("queries.parquet"))
    atomic_write_text(ctx.path("queries.json"), json.dumps({"all_images": query_ids is None}))

    rows = shard_rows(sigs.num_rows, settings.shard_size, settings.max_batches)
    shards = write_shards(sigs, ctx.run_dir / "signatures", rows)
    log.info("consolidate: %d signatures in %d shard(s), %d queries, %d rejects",
             sigs.num_rows, len(shards), queries.num_rows, rejects.num_rows)
    return shards


# -- compare -----------------------------------------------------------------------------

def compare_shard(ctx: RunContext, shard: dict[str, int]) -> str:
    """Top-k of every query against one catalogue shard -> matches/shard-i.parquet."""
    settings = ctx.settings
    scorer = Scorer(load_weights(ctx.weights_file), ctx.fv)
    qtable = read_table(ctx.path("queries.parquet"))
    queries = cmp.arrays_from_table(qtable, ctx.fv)
    queries.rows = qtable["row"].to_numpy()
    part = read_table(ctx.path(f"signatures/shard-{shard['shard']:05d}.parquet"),
                      columns=[n for n in SIGNATURES.names if n not in ("detail", "thumb")])
    catalogue = cmp.arrays_from_table(part, ctx.fv, first_row=shard["first_row"])
    with Progress(len(queries) * len(catalogue), f"compare shard {shard['shard']}",
                  "pairs") as progress:
        all_images = json.loads(ctx.path("queries.json").read_text())["all_images"]
        matches = cmp.compare(queries, catalogue, scorer, top_k=ctx.top_k,
                              threshold=ctx.threshold, block_size=settings.block_size,
                              both_ways=not all_images, progress=progress)
    out = ctx.path(f"matches/shard-{shard['shard']:05d}.parquet")
    write_table(matches, out, cmp.MATCH_COLUMNS)
    return str(out)


# -- verify ------------------------------------------------------------------------------

def verify(ctx: RunContext) -> dict[str, int]:
    """Check the close pairs of the compare shards in detail -> verified.parquet
    (npimage.matching.verify): variants of one template move below `retouched`."""
    from npimage.ingest.signatures import stored_by_id
    from npimage.matching.verify import pairs_to_verify, verify_matches

    shards = list_parts(ctx.run_dir / "matches", "shard-*.parquet")
    matches = pa.concat_tables([read_table(p, cmp.MATCH_COLUMNS) for p in shards]) \
        if shards else cmp.MATCH_COLUMNS.empty_table()
    pairs = pairs_to_verify(matches)
    ids = sorted(set(pairs["a"].to_pylist()) | set(pairs["b"].to_pylist()))
    details: dict[str, bytes | None] = stored_by_id(ctx.run_dir, "detail", ids)
    codes = reading.codes_so_far(ctx, ids)  # None with --read none: no GTIN check
    with Progress(pairs.num_rows, "verify", "pairs"):
        verified = verify_matches(pairs, details, codes,
                                  partial(stored_by_id, ctx.run_dir, "thumb"))
    write_table(verified, ctx.path("verified.parquet"))
    moved = int(pc.sum(pc.cast(pc.not_equal(
        verified["verify_reason"], "detail identical"), pa.int64())).as_py() or 0)
    log.info("verify: %d pairs checked, %d with a finding", verified.num_rows // 2, moved // 2)
    return {"verified_pairs": verified.num_rows // 2, "findings": moved // 2}


# -- merge -------------------------------------------------------------------------------

def merge(ctx: RunContext) -> dict[str, int]:
    """Image matches (merged shards + kept baseline pairs) and their product roll-up."""
    shards = list_parts(ctx.run_dir / "signatures", "shard-*.parquet")
    match_files = [ctx.run_dir / "matches" / p.name for p in shards]
    missing = [p.name for p in match_files if not p.exists()]
    if missing:
        raise RuntimeError(f"compare shards not computed: {missing[:5]}")
    baseline = _reusable_matches(ctx)
    from npimage.matching.merge import merge_image_matches, roll_up_products
    from npimage.review.store import rejected  # reviewers' "not the same" decisions

    data_dir = Path(ctx.data_dir)
    images = merge_image_matches(
        match_files, baseline / "image_matches.parquet" if baseline else None,
        ctx.path("queries.parquet"), ctx.run_dir / "signatures", ctx.path("image_matches.parquet"),
        client_id=ctx.client_id, run_id=ctx.run_id, top_k=ctx.top_k, threshold=ctx.threshold,
        verified=ctx.path("verified.parquet"),
        rejected=rejected(data_dir, ctx.client_id, "image"))
    products = roll_up_products(ctx.path("image_matches.parquet"), ctx.path("catalog.parquet"),
                                ctx.path("product_matches.parquet"), client_id=ctx.client_id,
                                run_id=ctx.run_id,
                                rejected=rejected(data_dir, ctx.client_id, "product"))
    return {"image_matches": images.num_rows, "product_matches": products.num_rows}


# -- pack reading (npimage.reading.stage) -------------------------------------------------

def read_codes(ctx: RunContext, batch: str) -> dict[str, int]:
    """Codes (barcodes, DataMatrix, QR) of one planned batch -> reading/codes/."""
    with Progress(num_rows(batch), f"codes {location(batch).name}", "img") as progress:
        return reading.read_codes(ctx, batch, progress)


def plan_text(ctx: RunContext) -> list[str]:
    """Batches of images to OCR (after merge: chosen from the close pairs)."""
    return reading.plan_text(ctx)


def read_text(ctx: RunContext, batch: str) -> dict[str, int]:
    """Printed text of one OCR batch -> reading/text/."""
    with Progress(num_rows(batch), f"text {location(batch).name}", "img") as progress:
        return reading.read_text(ctx, batch, progress)


# -- families ----------------------------------------------------------------------------

def families(ctx: RunContext) -> dict[str, Any]:
    """Family predictions per product (npimage.families.stage) -> family_predictions.parquet.

    Runs when FV is on and families are known (a manifest `family` column or
    np_product.family); off with --no-families / NPIMAGE_FAMILIES=0 / DAG param families.
    Otherwise writes no prediction (publish then clears the client's old ones).
    """
    from npimage.schemas import FAMILY_PREDICTIONS

    if not (ctx.fv and ctx.families):  # publish reads it
        write_table(FAMILY_PREDICTIONS.empty_table(), FamilyFiles(ctx.run_dir).predictions)
        return {"mode": "off", "predicted": 0, "misfiled": 0}
    from npimage.families.stage import run_family_stage  # Numba: only when it runs

    baseline = ctx.baseline_dir() if ctx.mode == "incremental" else None
    return run_family_stage(ctx.run_dir, ctx.client_id, ctx.run_id, baseline=baseline)


# -- publish -----------------------------------------------------------------------------

def _count_by_band(table_path: Path, images: bool) -> dict[str, int]:
    """Pairs per band, each pair counted once (the tables hold both directions)."""
    t = read_table(table_path, columns=["band", *(
        ["image_id", "match_image_id"] if images else ["product_id", "match_product_id"])])
    a, b = t.column(1), t.column(2)
    t = t.filter(pc.less(a, b))
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(t["band"]).flatten()],
                      strict=True)) if t.num_rows else {}
    return {name: counts.get(name, 0) for name in LABELS}


def _signature_counts(ctx: RunContext) -> dict[str, int]:
    """Signatures computed and reused by this run's planned batches (sig_counts/)."""
    total = {"computed": 0, "reused": 0, "resumed": 0}
    for batch in list_parts(ctx.run_dir / "plan", "batch-*.parquet"):
        counts = ctx.run_dir / "sig_counts" / f"{batch.stem}.json"
        if counts.exists():
            data = json.loads(counts.read_text())
            total = {k: total[k] + int(data.get(k, 0)) for k in total}
    return total


def summary(ctx: RunContext) -> dict[str, Any]:
    """Counts of the run's result files, for logs, XCom and the CLI's final message."""
    sig_rows = sum(num_rows(p) for p in list_parts(ctx.run_dir / "signatures", "shard-*.parquet"))
    counts = _signature_counts(ctx)
    return {
        "client_id": ctx.client_id,
        "run_id": ctx.run_id,
        "images": num_rows(ctx.path("catalog.parquet")),
        "signatures": sig_rows,
        "signatures_computed": counts["computed"],
        "signatures_reused": counts["reused"],
        "signatures_resumed": counts["resumed"],
        "rejects": num_rows(ctx.path("rejects.parquet")),
        "image_match_rows": num_rows(ctx.path("image_matches.parquet")),
        "image_pairs_by_band": _count_by_band(ctx.path("image_matches.parquet"), True),
        "product_pairs_by_band": _count_by_band(ctx.path("product_matches.parquet"), False),
        **_family_counts(ctx),
        "run_dir": str(ctx.run_dir),
        "warehouse": warehouse_display(ctx.data_dir),
    }


def _family_counts(ctx: RunContext) -> dict[str, int]:
    """Products with a family prediction and those flagged possibly misfiled (#18)."""
    path = FamilyFiles(ctx.run_dir).predictions
    if not path.exists():
        return {}
    t = read_table(path, columns=["misfiled"])
    return {"family_predictions": t.num_rows,
            "possibly_misfiled": int(pc.sum(t["misfiled"]).as_py() or 0)}


def _run_started_at(ctx: RunContext) -> datetime:
    """When extract began this run (context.json); now when that record is missing."""
    try:
        started = json.loads(ctx.path("context.json").read_text())["started_at"]
        return datetime.fromisoformat(started)
    except (OSError, ValueError, KeyError):
        return datetime.now(UTC)


def publish(ctx: RunContext) -> dict[str, Any]:
    """Publish the run into the warehouse (and backend, if any): the client's new baseline.

    The commit is the client's pointer (`storage.warehouse.publish`); a backend load runs
    around it, in one PostgreSQL transaction that commits only once the pointer is written.
    Anything after the commit (summary.json) cannot make a published run fail.
    """
    info = summary(ctx)
    tables = {
        "images": [ctx.path("catalog.parquet")],
        "signatures": list_parts(ctx.run_dir / "signatures", "shard-*.parquet"),
        "rejects": [ctx.path("rejects.parquet")],
        "image_matches": [ctx.path("image_matches.parquet")],
        "product_matches": [ctx.path("product_matches.parquet")],
    }
    families = FamilyFiles(ctx.run_dir).predictions
    if families.exists():
        tables["product_family_predictions"] = [families]
    run = {
        "client_id": ctx.client_id, "run_id": ctx.run_id, "mode": ctx.mode,
        "fv_model": ctx.fv_model if ctx.fv else None, "top_k": ctx.top_k,
        "threshold": ctx.threshold, "weights": load_weights(ctx.weights_file).source,
        "n_images": info["images"], "n_rejects": info["rejects"],
        "n_computed": info["signatures_computed"],
        "n_image_matches": num_rows(tables["image_matches"][0]),
        "n_product_matches": num_rows(tables["product_matches"][0]),
        "started_at": _run_started_at(ctx),
    }
    reading_files = reading.finish(ctx)  # pack reading: image_codes, image_text, image_reads
    tables.update({name: [path] for name, path in reading_files.items()})
    info["reading"] = reading.counts(ctx)
    backend_url = backend_of(ctx)

    def load_backend(commit: Callable[[], None]) -> None:
        """The backend load; it calls `commit` (the pointer write) just before its COMMIT."""
        if not backend_url:
            commit()
            return
        from npimage import backend

        extracted = ctx.path("backend_extract.json")
        run_info = {k: run[k] for k in ("fv_model", "threshold", "top_k", "weights", "n_images",
                                        "n_image_matches", "n_product_matches", "mode")}
        if extracted.exists():  # carries the watermark the next incremental run starts from
            run_info.update(json.loads(extracted.read_text()))
        with local_file(tables["image_matches"][0]) as images, \
                local_file(tables["product_matches"][0]) as products, \
                local_copy(families if families.exists() else None) as predictions:
            loaded = backend.load_matches(resolve_db(backend_url), ctx.client_id, ctx.run_id,
                                          images, products, run_info, before_commit=commit,
                                          family_predictions=predictions,
                                          reading={k: reading_files[k] for k in
                                                   ("image_codes", "image_text")})
        info["postgresql"] = {"database": where(resolve_db(backend_url)),
                              "image_match_rows": loaded["n_image_matches"],
                              "product_match_rows": loaded["n_product_matches"]}

    publish_warehouse(ctx.data_dir, ctx.client_id, ctx.run_id, tables, run,
                      around_commit=load_backend)
    try:
        atomic_write_text(ctx.path("summary.json"), json.dumps(info, indent=2, default=str))
    except OSError as exc:  # published already: a full disk here is only a warning
        log.warning("run %s is published, but its summary.json was not written: %s",
                    ctx.run_id, exc)
    return info


# -- report ------------------------------------------------------------------------------

def report(ctx: RunContext) -> str:
    """Render the static HTML review report of the client from the warehouse."""
    from npimage.report import render_report

    out = ctx.layout.report_dir(ctx.client_id)
    with local_output_dir(out) as local:
        render_report(ctx.layout.root, ctx.client_id, local)
    return str(out / "index.html")


def settings_context(client_id: str, source: str, run_id: str, settings: Settings,
                     mode: str = "full", backend: str | None = None,
                     allow_shrink: bool = False, max_shrink: float = 0.5) -> RunContext:
    """A RunContext from settings (CLI and DAG share this).

    Everything a worker needs is read here, once: workers use ctx.settings, which takes
    these values from the context and never reads the environment again for them.
    """
    return RunContext(client_id=client_id, run_id=run_id, source=str(source), mode=mode,
                      data_dir=str(settings.data_dir), fv=settings.fv, fv_model=settings.fv_model,
                      top_k=settings.top_k, threshold=settings.threshold,
                      weights_file=settings.weights_file, backend=backend,
                      read=",".join(parse_read(settings.read)) or "none",
                      text_max=settings.text_max,
                      batch_size=settings.batch_size, shard_size=settings.shard_size,
                      block_size=settings.block_size, max_pixels=settings.max_pixels,
                      read_timeout=settings.read_timeout, families=settings.families,
                      allow_shrink=allow_shrink, max_shrink=max_shrink)
