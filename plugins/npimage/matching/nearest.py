"""The nearest images of one picture in a client's last published run (`npimage nearest`).

The picture goes through what the signature stage does to every catalogue image (one
read, sha256 + size, one decode, the three hashes, and the feature vector when that run
used FV, with the same model), then through npimage.matching.compare against the run's signature
shards, with the run's weights and threshold: so a picture that is in the catalogue
scores exactly what the run scored, and an identical file scores 1.0.

The close ones are then verified as the run's verify stage does (npimage.matching.verify:
the detail signature of the picture against the run's stored ones, and the GTIN check when
the run read codes), so `score` is the verified score the run would store, `score_before`
compare's, and `verify_reason` why a pair moved.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from npimage.bands import band_codes
from npimage.config import Settings
from npimage.errors import UnknownClientError
from npimage.ingest.decode import ImageError, decode, read_bytes
from npimage.ingest.signatures import stored_by_id
from npimage.matching import compare as cmp
from npimage.matching.hashing import image_hashes
from npimage.matching.scoring import Scorer, load_weights
from npimage.schemas import SIGNATURES
from npimage.storage.layout import Layout
from npimage.storage.parquet_io import read_parts, read_table
from npimage.storage.runs import RunContext

#: Columns of the result, best first.
COLUMNS = ("rank", "image_id", "product_id", "score", "band", "dah", "ddh", "dph", "dfv",
           "same_bytes", "uri", "score_before", "verify_reason")


@dataclass
class NearestResult:
    """The nearest images of one picture, and where the time went (seconds)."""

    image: str
    client_id: str
    run_id: str
    fv: bool
    threshold: float
    n_catalogue: int
    table: pa.Table  # COLUMNS
    timings: dict[str, float] = field(default_factory=dict)


def current_run(client_id: str, data_dir: Path) -> RunContext:
    """The RunContext of the client's last published run (named by current.json)."""
    layout = Layout.of(data_dir)
    run_dir = layout.published_run_dir(client_id)
    if run_dir is None:
        raise UnknownClientError(f"client {client_id!r} has no published run under {data_dir}",
                                 hint=f"run `npimage run --client {client_id} ...` first")
    return RunContext.from_dict(json.loads((run_dir / "context.json").read_text()))


def load_catalogue(ctx: RunContext) -> tuple[cmp.SignatureArrays, str | None]:
    """The run's signatures as arrays (in shard order, rows as the run numbered them)."""
    columns = ["image_id", "sha256", "size_bytes", "ahash", "dhash", "phash"]
    if ctx.fv:
        columns += ["fv", "fv_model"]
    table = read_parts(ctx.run_dir / "signatures", SIGNATURES, "shard-*.parquet", columns)
    model = None
    if ctx.fv and table.num_rows:
        models = pc.unique(table["fv_model"].drop_null()).to_pylist()
        model = models[0] if models else None
    return cmp.arrays_from_table(table, ctx.fv), model


def query_signature(image: str, ctx: RunContext, settings: Settings, catalogue_model: str | None,
                    timings: dict[str, float]) -> tuple[cmp.SignatureArrays, bytes, bytes]:
    """Signature of the picture as a one-row SignatureArrays (row -1: never "itself"), and
    its detail signature and thumbnail (for verification and its second look)."""
    from npimage.ingest.thumbnail import thumbnail_jpeg
    from npimage.matching.detail import detail_signature

    t0 = time.perf_counter()
    try:
        data = read_bytes(image, settings.read_timeout)
        picture = decode(data, settings.max_pixels)
    except ImageError as exc:
        raise ValueError(f"{image}: {exc}") from exc
    hashes = np.array([image_hashes(picture.rgb)], np.int64).view(np.uint64)
    sha = int(hashlib.sha256(data).hexdigest()[:16], 16)
    detail = detail_signature(picture.rgb)
    thumb = thumbnail_jpeg(picture.rgb)
    timings["read, decode, hashes"] = time.perf_counter() - t0
    fv = None
    if ctx.fv:
        from npimage.fv import load_extractor  # TensorFlow: only when the run used FV

        t0 = time.perf_counter()
        extractor = load_extractor(ctx.fv_model, settings.model_cache)
        timings["FV model load"] = time.perf_counter() - t0
        if catalogue_model and extractor.model_id != catalogue_model:
            raise ValueError(f"the run's vectors come from {catalogue_model}, this model is "
                             f"{extractor.model_id}: they cannot be compared")
        t0 = time.perf_counter()
        fv = extractor.embed([picture.rgb]).astype(np.float16)
        timings["FV"] = time.perf_counter() - t0
    return cmp.SignatureArrays(
        ids=np.array([image], dtype=object), rows=np.array([-1], np.int64),
        sha=np.array([sha], np.uint64).view(np.int64), size=np.array([len(data)], np.int64),
        hashes=hashes, fv=fv), detail, thumb


def _products(ctx: RunContext, ids: list[str]) -> dict[str, tuple[str, str]]:
    """image_id -> (product_id, uri) from the run's catalog snapshot."""
    path = ctx.run_dir / "catalog.parquet"
    if not ids or not path.exists():
        return {}
    cat = read_table(path, columns=["image_id", "product_id", "uri"])
    cat = cat.filter(pc.is_in(cat["image_id"], pa.array(ids, pa.string())))
    return {i: (p, u) for i, p, u in zip(*(cat[c].to_pylist() for c in cat.column_names),
                                         strict=True)}


#: The query's id in the pairs it verifies (not an image id of the run).
QUERY_ID = "\x00query"


def _query_codes(image: str, ctx: RunContext, settings: Settings, ids: list[str]
                 ) -> pa.Table | None:
    """(image_id, gtin) of the codes of the picture (read as the run's read_codes stage
    reads) and of the run's images `ids`, or None when the run did not read codes (then
    the run's verify had no GTIN check either)."""
    from npimage.reading.stage import read_image, readers
    from npimage.schemas import IMAGE_CODES

    stored = ctx.run_dir / "image_codes.parquet"
    if "codes" not in readers(ctx) or not stored.exists():
        return None
    _, _, rows = read_image(image, "codes", max_pixels=settings.max_pixels,
                            read_timeout=settings.read_timeout)
    mine = pa.table({"image_id": pa.array([QUERY_ID] * len(rows), pa.string()),
                     "gtin": pa.array([r.get("gtin") for r in rows], pa.string())})
    run = read_table(stored, IMAGE_CODES)
    run = run.filter(pc.is_in(run["image_id"], pa.array(ids, pa.string())))
    return pa.concat_tables([mine, run.select(["image_id", "gtin"]).cast(mine.schema)])


def verify_nearest(matches: pa.Table, detail: bytes, image: str, ctx: RunContext,
                   settings: Settings, thumb: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(verified score, reason) of compare's top-k rows: the pairs the run's verify stage
    would check (`pairs_to_verify`'s rule) are checked the same way (visual and GTIN
    checks); the others keep their score and an empty reason."""
    from npimage.matching import verify as V

    score = matches["score"].to_numpy(zero_copy_only=False).astype(np.float32)
    reason = np.full(len(score), "", dtype=object)
    ids = matches["match_image_id"].to_pylist()
    dfv = np.nan_to_num(matches["dfv"].to_numpy(zero_copy_only=False).astype(np.float32))
    same = matches["same_bytes"].to_numpy(zero_copy_only=False).astype(bool)
    todo = np.flatnonzero(((score >= V.VERIFY_FROM) | (dfv >= V.VERIFY_FV_FROM)) & ~same)
    if not len(todo):
        return score, reason
    wanted = [ids[i] for i in todo]
    details: dict[str, bytes | None] = stored_by_id(ctx.run_dir, "detail", wanted)
    details[QUERY_ID] = detail
    pairs = pa.table({"a": pa.array([QUERY_ID] * len(todo), pa.string()),
                      "b": pa.array(wanted, pa.string()),
                      "score": pa.array(score[todo], pa.float32())})
    def thumbs(some: list[str]) -> dict[str, bytes | None]:
        """The run's stored thumbnails, and the picture's own (the second look)."""
        found = stored_by_id(ctx.run_dir, "thumb", [i for i in some if i != QUERY_ID])
        found[QUERY_ID] = thumb
        return found

    verified = V.verify_matches(pairs, details, _query_codes(image, ctx, settings, wanted),
                                thumbs)
    got = {m: (s, r) for i, m, s, r in zip(*(verified[c].to_pylist() for c in (
        "image_id", "match_image_id", "score", "verify_reason")), strict=True) if i == QUERY_ID}
    for i in todo:
        if ids[i] in got:
            score[i], reason[i] = got[ids[i]]
    return score, reason


def nearest(image: str | Path, client_id: str, data_dir: str | Path | None = None,
            top_k: int = 10, threshold: float | None = None) -> NearestResult:
    """The top_k images of the client's last run that score >= threshold with the picture,
    verified as the run verifies (`verify_nearest`), best verified score first.

    threshold (on compare's score, as in the run) defaults to the run's; the run's weights
    and FV setting are used.
    """
    settings = Settings().with_overrides(data_dir=data_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ctx = current_run(client_id, settings.data_dir)
    catalogue, model = load_catalogue(ctx)
    timings["load run signatures"] = time.perf_counter() - t0
    query, detail, thumb = query_signature(str(image), ctx, settings, model, timings)
    cut = ctx.threshold if threshold is None else threshold
    scorer = Scorer(load_weights(ctx.weights_file), ctx.fv)
    t0 = time.perf_counter()
    matches = cmp.compare(query, catalogue, scorer, top_k=top_k, threshold=cut)
    timings["compare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verified, reason = verify_nearest(matches, detail, str(image), ctx, settings, thumb)
    timings["verify"] = time.perf_counter() - t0
    order = sorted(range(len(verified)), key=lambda i: (-float(verified[i]),
                                                         matches["match_image_id"][i].as_py()))
    matches = matches.take(pa.array(order, pa.int64()))
    score_before = matches["score"]
    verified, reason = verified[order], reason[order]
    ids = matches["match_image_id"].to_pylist()
    info = _products(ctx, ids)
    table = pa.table({
        "rank": pa.array(range(1, len(ids) + 1), pa.int32()),
        "image_id": pa.array(ids, pa.string()),
        "product_id": pa.array([info.get(i, (None, None))[0] for i in ids], pa.string()),
        "score": pa.array(verified, pa.float32()),
        "band": pa.array(band_codes(verified).tolist(), pa.string()),
        "dah": matches["dah"], "ddh": matches["ddh"], "dph": matches["dph"],
        "dfv": matches["dfv"], "same_bytes": matches["same_bytes"],
        "uri": pa.array([info.get(i, (None, None))[1] for i in ids], pa.string()),
        "score_before": score_before,
        "verify_reason": pa.array([r or None for r in reason], pa.string()),
    })
    return NearestResult(str(image), client_id, ctx.run_id, ctx.fv, cut, len(catalogue),
                         table, timings)


def _moved(row: dict[str, Any]) -> str:
    """What verification said of a row: "" (not checked), its reason, and the score it
    moved from when it moved."""
    reason = row["verify_reason"] or ""
    if reason and abs(row["score"] - row["score_before"]) > 5e-7:
        return f"{reason} (from {row['score_before']:.4f})"
    return reason


def format_result(result: NearestResult) -> str:
    """A plain-text table of the result, then the timings."""
    head = (f"nearest images of {result.image} in client {result.client_id} "
            f"(run {result.run_id}, {result.n_catalogue} images, "
            f"FV {'on' if result.fv else 'off'}, score >= {result.threshold:g})")
    lines = [head]
    rows = result.table.to_pylist()
    if not rows:
        lines.append("  no image scores that high")
    else:
        width = max(len("image_id"), *(len(r["image_id"]) for r in rows))
        pwidth = max(len("product_id"), *(len(r["product_id"] or "") for r in rows))
        lines.append(f"  {'rank':>4}  {'image_id':<{width}}  {'product_id':<{pwidth}}  "
                     f"{'score':>6}  {'band':<12}  {'dah':>5}  {'ddh':>5}  {'dph':>5}  "
                     f"{'dfv':>5}  same_bytes  verified")
        for r in rows:
            dfv = "-" if r["dfv"] is None else f"{r['dfv']:.3f}"
            lines.append(
                f"  {r['rank']:>4}  {r['image_id']:<{width}}  {r['product_id'] or '':<{pwidth}}  "
                f"{r['score']:>6.4f}  {r['band'] or '-':<12}  {r['dah']:>5.3f}  "
                f"{r['ddh']:>5.3f}  {r['dph']:>5.3f}  {dfv:>5}  "
                f"{'yes' if r['same_bytes'] else '':<10}  {_moved(r)}")
    lines.append("  time: " + ", ".join(f"{k} {v * 1000:.0f} ms"
                                        for k, v in result.timings.items()))
    return "\n".join(lines)
