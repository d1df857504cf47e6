"""The pack-reading stages of a run: codes per planned batch, OCR for the images that need it.

    plan batches --signatures(batch) x B-->  reading/codes/, reading/reads/codes-*
    merge --> plan_text --> read_text(batch) x T --> reading/text/, reading/reads/text-*
    publish --> finish (image_codes, image_text, image_reads .parquet in the run folder)

What is read is `ctx.read` (a comma list): `codes` (every new or changed image: cheap),
`text` (OCR of the images in close pairs, band very_similar or better: the pairs whose
products may differ only by the printed strength), `text-all` (OCR of every image),
or `none`. `ctx.text_max` caps the OCR of one run (0: no cap); the images left over are
read by the next runs, since reads are kept per image and reused while its sha256 and
the reader's version are unchanged. Every function takes a RunContext and works without
Airflow; the codes of a batch are read by its signature task (`pipeline.signatures`), and
the DAG maps read_text over its batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from npimage.errors import InputError
from npimage.schemas import CATALOG, IMAGE_CODES, IMAGE_READS, IMAGE_TEXT, SIGNATURES
from npimage.storage.parquet_io import num_rows, read_parts, read_table, write_table
from npimage.storage.runs import RunContext
from npimage.storage.store import Location, location, write_text_atomic

log = logging.getLogger("npimage")

READERS = ("codes", "text", "text-all")
#: Bands whose pairs get their images read by OCR with `--read text`.
TEXT_BANDS = ("same", "retouched", "very_similar")
DEFAULT_READ = "codes"


def parse_read(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The readers of a `--read` value: 'codes,text', 'none', '' (= none); unknown names refused."""
    if value is None:
        value = DEFAULT_READ
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v and v != "none"]
    bad = [v for v in items if v not in READERS]
    if bad:
        raise InputError(f"unknown reader(s) {bad} in --read",
                         hint=f"choose from {', '.join(READERS)}, comma-separated, or none")
    return tuple(dict.fromkeys(items))


def readers(ctx: RunContext) -> tuple[str, ...]:
    return parse_read(getattr(ctx, "read", DEFAULT_READ))


def _dir(ctx: RunContext) -> Location:
    return ctx.run_dir / "reading"


def _prior(ctx: RunContext) -> Location | None:
    """The last published run folder, when this run may reuse its reads (incremental)."""
    return ctx.baseline_dir() if ctx.mode == "incremental" else None


def _versions() -> dict[str, str]:
    from npimage.reading import codes, text

    return {"codes": codes.reader_version(), "text": text.reader_version()}


# -- one image ---------------------------------------------------------------------------

def _code_rows(base: dict, gray: np.ndarray) -> list[dict]:
    from npimage.reading.codes import read_codes

    return [{**base, "seq": seq, **code.as_dict()} for seq, code in enumerate(read_codes(gray))]


def _text_rows(base: dict, rgb: np.ndarray) -> list[dict]:
    from npimage.reading.text import read_text

    rows = []
    for i, ln in enumerate(read_text(rgb)):
        x0, y0, x1, y1 = ln.box
        rows.append({**base, "line": i, "text": ln.text, "confidence": ln.confidence,
                     "x0": x0, "y0": y0, "x1": x1, "y1": y1, "tokens": " ".join(ln.tokens),
                     "quantities": json.dumps([q.as_dict() for q in ln.quantities]),
                     "strengths": "; ".join(str(q) for q in ln.quantities)})
    return rows


def grey(rgb: np.ndarray) -> np.ndarray:
    """The (H, W) uint8 grey picture the code reader reads, of an (H, W, 3) uint8 RGB one.

    ITU-R 601 luma rounded (what PIL's convert('L') gives), by OpenCV's integer path:
    ~0.1 ms on a 350-pixel picture where float math per channel took ~0.6 ms.
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def read_image(uri: str, reader: str, *, max_pixels: int, read_timeout: float,
               base: dict | None = None) -> tuple[str, tuple[int, int], list[dict]]:
    """(sha256, (width, height), rows) of one image for one reader ('codes' or 'text').

    Raises npimage.ingest.decode.ImageError for an image that cannot be read.
    """
    from npimage.ingest.decode import decode_for_reading, read_bytes

    data = read_bytes(uri, read_timeout)
    sha = hashlib.sha256(data).hexdigest()
    img = decode_for_reading(data, max_pixels)
    rgb = np.asarray(img.rgb)
    base = {**(base or {}), "sha256": sha}
    if reader == "codes":
        return sha, (img.width, img.height), _code_rows(base, grey(rgb))
    return sha, (img.width, img.height), _text_rows(base, rgb)


def _reuse(prior: Location | None, reader: str, ids: list[str]) -> tuple[dict, pa.Table | None]:
    """Prior reads of these ids: {image_id: read row} and the prior result rows."""
    if prior is None or not (prior / "image_reads.parquet").exists() or not ids:
        return {}, None
    reads = read_table(prior / "image_reads.parquet", IMAGE_READS)
    reads = reads.filter(pc.and_(pc.equal(reads["reader"], reader),
                                 pc.is_in(reads["image_id"], pa.array(ids, pa.string()))))
    table = "image_codes" if reader == "codes" else "image_text"
    schema = IMAGE_CODES if reader == "codes" else IMAGE_TEXT
    rows = read_table(prior / f"{table}.parquet", schema)
    rows = rows.filter(pc.is_in(rows["image_id"], pa.array(ids, pa.string())))
    return {r["image_id"]: r for r in reads.to_pylist()}, rows


class _Reads:
    """What one reader read of one batch: result rows, one read row per image read, the
    image ids whose prior read is kept, failures; written by `write`."""

    def __init__(self, ctx: RunContext, kind: str, ids: list[str]) -> None:
        self.ctx, self.kind = ctx, kind
        self.version = _versions()[kind]
        self.prior_reads, self.prior_rows = _reuse(_prior(ctx), kind, ids)
        self.out_rows: list[dict] = []
        self.reads: list[dict] = []
        self.keep_prior: list[str] = []
        self.failed = 0
        self.now = datetime.now(UTC)

    def prior(self, image_id: str) -> dict | None:
        """The baseline's read of this image by this reader's current version, if any."""
        old = self.prior_reads.get(image_id)
        return old if old is not None and old["version"] == self.version else None

    def keep(self, old: dict) -> None:
        self.reads.append(old)
        self.keep_prior.append(old["image_id"])

    def add(self, base: dict, sha: str, size: tuple[int, int], rows: list[dict]) -> None:
        self.out_rows.extend(rows)
        self.reads.append({**base, "sha256": sha, "reader": self.kind, "version": self.version,
                           "n_found": len(rows), "width": size[0], "height": size[1],
                           "computed_at": self.now})

    def fail(self, image_id: str, exc: BaseException) -> None:
        self.failed += 1
        log.warning("%s: %s not read: %s", self.kind, image_id, exc)

    def write(self, name: str) -> dict[str, int]:
        """Write reading/<kind>/<name> and reading/reads/<kind>-<name>; return the counts."""
        schema = IMAGE_CODES if self.kind == "codes" else IMAGE_TEXT
        table = pa.Table.from_pylist(self.out_rows, schema=schema)
        if self.prior_rows is not None and self.keep_prior:
            kept = self.prior_rows.filter(pc.is_in(self.prior_rows["image_id"],
                                                   pa.array(self.keep_prior)))
            table = pa.concat_tables([table, kept.cast(schema)])
        write_table(table, _dir(self.ctx) / self.kind / name, schema)
        write_table(pa.Table.from_pylist(self.reads, schema=IMAGE_READS),
                    _dir(self.ctx) / "reads" / f"{self.kind}-{name}", IMAGE_READS)
        return {"read": len(self.reads) - len(self.keep_prior), "reused": len(self.keep_prior),
                "failed": self.failed, "found": table.num_rows}


def _read_batch(ctx: RunContext, batch: Location, reader: str,
                progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Read one batch of catalog rows with one reader; write result and read rows."""
    settings = ctx.settings
    kind = "codes" if reader == "codes" else "text"
    cat = read_table(batch, CATALOG).to_pylist()
    acc = _Reads(ctx, kind, [r["image_id"] for r in cat])
    for r in cat:
        base = {"client_id": r["client_id"], "image_id": r["image_id"]}
        try:
            old = acc.prior(r["image_id"])
            if old is not None:
                from npimage.ingest.decode import read_bytes

                sha = hashlib.sha256(read_bytes(r["uri"], settings.read_timeout)).hexdigest()
                if sha == old["sha256"]:
                    acc.keep(old)
                    continue
            sha, size, rows = read_image(r["uri"], kind, max_pixels=settings.max_pixels,
                                         read_timeout=settings.read_timeout, base=base)
        except Exception as exc:
            acc.fail(r["image_id"], exc)
            continue
        finally:
            if progress:
                progress(1)
        acc.add(base, sha, size, rows)
    return acc.write(batch.name)


class BatchCodes:
    """The codes of one planned batch, read by the signature stage from its own decode.

    With codes on, `pipeline.signatures` hands one to `compute_batch`, which reads and
    decodes each image once for its signature, its thumbnail and its codes (the readers'
    full-size picture; npimage.ingest.decode.decode_both). `done` writes the same files as
    `read_codes` does, plus a marker holding the batch's key: `read_codes` of that batch
    then takes them over instead of reading and decoding every image again. A batch whose
    signatures were resumed from disk without that marker is read by `read_codes` (called
    by the signature task). Reuse of the baseline's reads is the same as there (same
    sha256 and reader version).
    """

    def __init__(self, ctx: RunContext, batch: Location, key: str) -> None:
        self.batch, self.key = batch, key
        self.acc = _Reads(ctx, "codes", read_table(batch, CATALOG, ["image_id"])[
            "image_id"].to_pylist())

    def wanted(self, base: dict, sha: str) -> bool:
        """Whether this image must be read (else its baseline read is kept, now)."""
        old = self.acc.prior(base["image_id"])
        if old is not None and old["sha256"] == sha:
            self.acc.keep(old)
            return False
        return True

    def read(self, base: dict, sha: str, picture: Any) -> None:
        """Read the codes on `picture` (a Decoded at the readers' size, or the ImageError
        its decode raised); a failure is counted and logged, as in read_codes."""
        base = {"client_id": base["client_id"], "image_id": base["image_id"]}
        try:
            if isinstance(picture, Exception):
                raise picture
            rows = _code_rows({**base, "sha256": sha}, grey(np.asarray(picture.rgb)))
        except Exception as exc:
            self.acc.fail(base["image_id"], exc)
            return
        self.acc.add(base, sha, (picture.width, picture.height), rows)

    def failed(self, base: dict, exc: BaseException) -> None:
        """An image the signature stage could not read or decode."""
        self.acc.fail(base["image_id"], exc)

    def done(self) -> dict[str, int]:
        """Write the batch's codes and reads, then its marker; return the counts."""
        counts = self.acc.write(self.batch.name)
        write_text_atomic(_marker(self.acc.ctx, self.batch.name),
                          json.dumps({**counts, "key": self.key}))
        return counts


def codes_key(signature_key: str) -> str:
    """The key of a batch's codes: its signature key (catalog rows, pixel limit) and the
    code reader's version."""
    return hashlib.sha256(f"{signature_key} {_versions()['codes']}".encode()).hexdigest()


def _marker(ctx: RunContext, name: str) -> Location:
    return _dir(ctx) / "done" / f"codes-{name.removesuffix('.parquet')}.json"


def batch_codes(ctx: RunContext, batch: Location, signature_key: str) -> BatchCodes | None:
    """A BatchCodes for the signature stage when this run reads codes, else None."""
    if "codes" not in readers(ctx):
        return None
    return BatchCodes(ctx, batch, codes_key(signature_key))


def _taken_over(ctx: RunContext, batch: Location) -> dict[str, int] | None:
    """The counts of a batch whose codes the signature stage read (marker with this
    batch's key and both files present), else None."""
    from npimage import resume

    try:
        done = json.loads(_marker(ctx, batch.name).read_text())
    except (OSError, ValueError):
        return None
    key = codes_key(resume.batch_key(ctx, batch, ctx.settings.max_pixels))
    files = (_dir(ctx) / "codes" / batch.name, _dir(ctx) / "reads" / f"codes-{batch.name}")
    if done.get("key") != key or not all(f.is_file() for f in files):
        return None
    return {k: int(done.get(k, 0)) for k in ("read", "reused", "failed", "found")}


# -- stages ------------------------------------------------------------------------------

def read_codes(ctx: RunContext, batch: str,
               progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Codes of the images of one planned batch (the signature batches): taken over when
    the signature task read them from its decode (`BatchCodes`), else read here (a batch
    whose signatures were resumed)."""
    if "codes" not in readers(ctx):
        return {"read": 0, "reused": 0, "failed": 0, "found": 0}
    done = _taken_over(ctx, location(batch))
    if done is not None:  # read by the signature stage from its decode
        if progress:
            progress(num_rows(batch))
        return done
    return _read_batch(ctx, location(batch), "codes", progress)


def _text_wanted(ctx: RunContext, sigs: pa.Table) -> list[str]:
    """Image ids that this run's settings want read by OCR, in a stable order."""
    chosen = readers(ctx)
    if "text-all" in chosen:
        return sorted(sigs["image_id"].to_pylist())
    if "text" not in chosen:
        return []
    matches = read_table(ctx.run_dir / "image_matches.parquet").select(
        ["image_id", "match_image_id", "band"])
    close = matches.filter(pc.is_in(matches["band"], pa.array(TEXT_BANDS)))
    ids = set(close["image_id"].to_pylist()) | set(close["match_image_id"].to_pylist())
    return sorted(ids)


def plan_text(ctx: RunContext) -> list[str]:
    """Batches (Parquet of catalog rows) of images to OCR this run; needs merged matches.

    Images already read by the baseline with the same sha256 and OCR version are reused
    (finish carries their rows); the rest are read, at most `ctx.text_max` (0: all).
    """
    folder = _dir(ctx) / "text_plan"
    for stale in folder.glob("batch-*.parquet"):
        stale.unlink()
    sigs = read_parts(ctx.run_dir / "signatures", SIGNATURES, "shard-*.parquet",
                      columns=["image_id", "sha256"])
    wanted = _text_wanted(ctx, sigs)
    if not wanted:
        return []
    sha = dict(zip(sigs["image_id"].to_pylist(), sigs["sha256"].to_pylist(), strict=True))
    prior = _prior(ctx)
    done: set[str] = set()
    if prior is not None and (prior / "image_reads.parquet").exists():
        version = _versions()["text"]
        for r in read_table(prior / "image_reads.parquet", IMAGE_READS).to_pylist():
            if r["reader"] == "text" and r["version"] == version and sha.get(r["image_id"]) == \
                    r["sha256"]:
                done.add(r["image_id"])
    todo = [i for i in wanted if i not in done]
    cap = int(getattr(ctx, "text_max", 0) or 0)
    left = max(0, len(todo) - cap) if cap else 0
    if cap:
        todo = todo[:cap]
    catalog = read_table(ctx.run_dir / "catalog.parquet", CATALOG)
    rows = catalog.filter(pc.is_in(catalog["image_id"], pa.array(todo, pa.string())))
    settings = ctx.settings
    size = max(1, min(settings.batch_size, 64),
               math.ceil(rows.num_rows / settings.max_batches))
    batches = []
    for k, start in enumerate(range(0, rows.num_rows, size)):
        path = folder / f"batch-{k:05d}.parquet"
        write_table(rows.slice(start, size), path, CATALOG)
        batches.append(str(path))
    write_text_atomic(folder / "plan.json", json.dumps(
        {"wanted": len(wanted), "reused": len(wanted) - len(todo) - left, "planned": len(todo),
         "left_for_next_runs": left}))
    log.info("plan_text: %d images want OCR, %d reused, %d planned in %d batches, %d left "
             "(text_max)", len(wanted), len(wanted) - len(todo) - left, len(todo), len(batches),
             left)
    return batches


def read_text(ctx: RunContext, batch: str,
              progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """OCR of the images of one text batch."""
    return _read_batch(ctx, location(batch), "text", progress)


def finish(ctx: RunContext) -> dict[str, Location]:
    """The run's image_codes, image_text and image_reads Parquet files (for publish).

    This run's reads, plus the baseline's reads of images whose sha256 is unchanged and
    that this run did not read again; images no longer in the run's signatures drop out.
    """
    sigs = read_parts(ctx.run_dir / "signatures", SIGNATURES, "shard-*.parquet",
                      columns=["image_id", "sha256"])
    current = dict(zip(sigs["image_id"].to_pylist(), sigs["sha256"].to_pylist(), strict=True))
    plan_names = {p.name for p in (ctx.run_dir / "plan").glob("batch-*.parquet")}
    text_names = {p.name for p in (_dir(ctx) / "text_plan").glob("batch-*.parquet")}
    reads = [read_table(_dir(ctx) / "reads" / f"codes-{n}", IMAGE_READS) for n in plan_names]
    reads += [read_table(_dir(ctx) / "reads" / f"text-{n}", IMAGE_READS) for n in text_names]
    codes = [read_table(_dir(ctx) / "codes" / n, IMAGE_CODES) for n in plan_names]
    texts = [read_table(_dir(ctx) / "text" / n, IMAGE_TEXT) for n in text_names]
    fresh = pa.concat_tables([IMAGE_READS.empty_table(), *reads])
    seen = {(i, k) for i, k in zip(fresh["image_id"].to_pylist(), fresh["reader"].to_pylist(),
                                    strict=True)}
    baseline = ctx.baseline_dir()
    if baseline is not None and (baseline / "image_reads.parquet").exists():
        old = read_table(baseline / "image_reads.parquet", IMAGE_READS).to_pylist()
        keep = [r for r in old if (r["image_id"], r["reader"]) not in seen
                and current.get(r["image_id"]) == r["sha256"]]
        fresh = pa.concat_tables([fresh, pa.Table.from_pylist(keep, schema=IMAGE_READS)])
        for reader, parts, schema in (("codes", codes, IMAGE_CODES), ("text", texts, IMAGE_TEXT)):
            ids = pa.array([r["image_id"] for r in keep if r["reader"] == reader], pa.string())
            rows = read_table(baseline / f"image_{reader}.parquet", schema)
            parts.append(rows.filter(pc.is_in(rows["image_id"], ids)))
    out = {}
    for name, parts, schema in (("image_codes", codes, IMAGE_CODES),
                                ("image_text", texts, IMAGE_TEXT)):
        table = pa.concat_tables([schema.empty_table(), *parts])
        alive = pc.is_in(table["image_id"], pa.array(list(current), pa.string()))
        out[name] = write_table(table.filter(alive).sort_by([("image_id", "ascending")]),
                                ctx.run_dir / f"{name}.parquet", schema)
    alive = pc.is_in(fresh["image_id"], pa.array(list(current), pa.string()))
    out["image_reads"] = write_table(fresh.filter(alive), ctx.run_dir / "image_reads.parquet",
                                     IMAGE_READS)
    return out


def codes_so_far(ctx: RunContext, ids: Iterable[str]) -> pa.Table | None:
    """(image_id, gtin) of the codes read for these images before publish (for verify),
    or None when this run does not read codes (`--read none`: the GTIN check is skipped).

    This run's read_codes batches (reused reads included), plus, for images no batch of
    this run read (an incremental run's unchanged images), the baseline's image_codes rows
    whose sha256 is still the image's: the rows `finish` will publish.
    """
    if "codes" not in readers(ctx):
        return None
    wanted = pa.array(sorted(set(ids)), pa.string())
    cols = ["image_id", "gtin"]
    plan_names = [p.name for p in (ctx.run_dir / "plan").glob("batch-*.parquet")]
    parts, seen = [], []
    for name in plan_names:
        codes, reads = _dir(ctx) / "codes" / name, _dir(ctx) / "reads" / f"codes-{name}"
        if codes.exists():
            t = read_table(codes, IMAGE_CODES)
            parts.append(t.filter(pc.is_in(t["image_id"], wanted)).select(cols))
        if reads.exists():
            seen.append(read_table(reads, IMAGE_READS).select(["image_id"]))
    baseline = ctx.baseline_dir()
    if baseline is not None and (baseline / "image_codes.parquet").exists():
        done = pa.concat_tables([pa.table({"image_id": pa.array([], pa.string())}), *seen])
        old = read_table(baseline / "image_codes.parquet", IMAGE_CODES)
        old = old.filter(pc.and_(pc.is_in(old["image_id"], wanted),
                                 pc.invert(pc.is_in(old["image_id"], done["image_id"]))))
        if old.num_rows:
            sigs = read_parts(ctx.run_dir / "signatures", SIGNATURES, "shard-*.parquet",
                              columns=["image_id", "sha256"], ids=old["image_id"].to_pylist())
            same = old.join(sigs, ["image_id", "sha256"], join_type="inner")
            parts.append(same.select(cols))
    empty = pa.table({"image_id": pa.array([], pa.string()), "gtin": pa.array([], pa.string())})
    return pa.concat_tables([empty, *parts])


def counts(ctx: RunContext) -> dict[str, Any]:
    """Rows of the finished reading files (for the summary)."""
    return {name: num_rows(ctx.run_dir / f"{name}.parquet")
            for name in ("image_codes", "image_text")
            if (ctx.run_dir / f"{name}.parquet").exists()}
