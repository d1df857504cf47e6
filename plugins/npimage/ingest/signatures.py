"""Signatures: per image, the byte signature, three perceptual hashes, the detail
signature, the report's thumbnail and an optional FV.

One batch of catalog rows in, one Parquet of signatures and one of rejects out. Each image
is read once and decoded once, at the size its consumers need (npimage.ingest.decode);
from that working copy come the hashes' grey copy, the detail signature, the report's
thumbnail (JPEG, stored in the `thumb` column) and the FV input. The hashes of the whole
batch are computed at once in NumPy (npimage.matching.hashing.hashes_of_greys). A stored
signature is reused when size + sha256 show the bytes have not changed, it is of the
current SIGNATURE_VERSION and detail version (`is_current`) and carries the FV this run
needs, so unchanged images are never decoded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from npimage.fv import FeatureExtractor
from npimage.ingest.decode import (
    Decoded,
    ImageError,
    decode,
    decode_both,
    decode_for_reading,
    read_all,
)
from npimage.ingest.resample import Pixels
from npimage.ingest.resample import grey_copy as resampled_grey
from npimage.ingest.thumbnail import thumbnail_jpeg
from npimage.matching.detail import DETAIL_BYTES, DETAIL_VERSION, detail_signature
from npimage.matching.detail import is_current as detail_is_current
from npimage.matching.hashing import GREY_SIDE, grey_copy, hashes_of_greys
from npimage.schemas import CATALOG, REJECTS, SIGNATURE_VERSION, SIGNATURES
from npimage.storage.parquet_io import read_parts, read_table, write_table

#: Images embedded per model call: bounds the memory of decoded pictures held for FV.
FV_CHUNK = 64


@dataclass(frozen=True)
class BatchResult:
    """Counts of one signature batch (small: goes through XCom)."""

    computed: int
    reused: int
    rejected: int

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused, "rejected": self.rejected}


Row = dict[str, Any]


class CodeSink(Protocol):
    """Reads the codes of a batch's images from the pictures the batch decodes
    (npimage.reading.stage.BatchCodes): one read and one decode per image for both."""

    def wanted(self, base: Row, sha: str) -> bool: ...
    def read(self, base: Row, sha: str, picture: Decoded | Exception) -> None: ...
    def failed(self, base: Row, exc: BaseException) -> None: ...


def is_current(row: dict[str, Any]) -> bool:
    """Is a stored signature of the current version, detail included (else recompute)?"""
    return row.get("sig_version") == SIGNATURE_VERSION and detail_is_current(row.get("detail"))


def current_expression() -> ds.Expression:
    """`is_current` as a dataset expression (never null): the plan stage measures stored
    signatures with it without reading their detail bytes into Python."""
    detail = ds.field("detail")
    detail_ok = pc.and_kleene(
        pc.equal(pc.binary_length(detail), DETAIL_BYTES),
        pc.equal(pc.binary_slice(detail, 0, 1), pa.scalar(bytes([DETAIL_VERSION]), pa.binary())))
    version_ok = pc.equal(ds.field("sig_version"), pa.scalar(SIGNATURE_VERSION, pa.int16()))
    return pc.coalesce(pc.and_kleene(detail_ok, version_ok), pa.scalar(False))


def pixel_features(rgb: Image.Image, pixels: Pixels | None = None
                   ) -> tuple[np.ndarray, bytes, bytes]:
    """(grey copy for the hashes, detail signature, thumbnail JPEG) of a working copy.

    An RGB working copy (every one the stage decodes) is resized by npimage.ingest.resample
    (Pillow's bytes, faster), its pixels read out once (or given as `pixels`, which the
    FV's fit then reuses) and transposed once for the grey copy's, the detail's and the
    thumbnail's resizes (the grey copy converted from them, `Pixels.grey`);
    tests/test_resample.py holds each result to the Pillow one."""
    if pixels is None and rgb.mode == "RGB":
        pixels = Pixels(np.asarray(rgb))
    grey = grey_copy(rgb) if pixels is None else resampled_grey(rgb, GREY_SIDE, pixels)
    return grey, detail_signature(rgb, pixels=pixels), thumbnail_jpeg(rgb, pixels)


def _prior_rows(prior: Path | None, ids: list[str]) -> dict[str, Row]:
    """Stored signatures of these image ids from the last published run's folder."""
    if prior is None or not ids:
        return {}
    return {r["image_id"]: r for r in read_parts(prior, SIGNATURES, ids=ids).to_pylist()}


class _Rows:
    """Column lists for the output tables."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.cols: dict[str, list[Any]] = {n: [] for n in schema.names}

    def add(self, row: Row) -> None:
        for name in self.schema.names:
            self.cols[name].append(row.get(name))

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=self.schema)


def _embed_pending(pending: list[tuple[Row, Pixels]], extractor: FeatureExtractor) -> None:
    """Run the FV model on the decoded pictures waiting in `pending`; set their rows' fv."""
    if not pending:
        return
    vectors = extractor.embed([img for _, img in pending]).astype(np.float16)
    for (row, _), vec in zip(pending, vectors, strict=True):
        row["fv"] = vec
    pending.clear()


def _reusable(old: Row | None, sha: str, size: int,
              extractor: FeatureExtractor | None) -> bool:
    """May the stored signature `old` stand for bytes of this sha256 and size?"""
    return bool(old and old["sha256"] == sha and old["size_bytes"] == size and is_current(old)
                and (extractor is None or (old["fv"] is not None
                                           and old["fv_model"] == extractor.model_id)))


def _signature_row(cat: Row, sha: str, size: int, width: int, height: int, detail: bytes,
                   thumb: bytes, now: datetime) -> Row:
    """A computed signature row; the hashes are filled in once per batch."""
    return {"client_id": cat["client_id"], "image_id": cat["image_id"], "sha256": sha,
            "size_bytes": size, "width": width, "height": height, "fv": None,
            "fv_model": None, "computed_at": now, "detail": detail,
            "sig_version": SIGNATURE_VERSION, "thumb": thumb}


def _set_hashes(rows: list[Row], greys: list[np.ndarray]) -> None:
    """ahash, dhash, phash of every computed row, in one NumPy pass over the batch."""
    if not rows:
        return
    hashes = hashes_of_greys(np.stack(greys)).tolist()
    for row, (ah, dh, ph) in zip(rows, hashes, strict=True):
        row["ahash"], row["dhash"], row["phash"] = ah, dh, ph


def _decode(data: bytes, max_pixels: int, base: Row, sha: str,
            codes: CodeSink | None) -> Decoded:
    """The working copy of `data`; with `codes`, the codes read from the same decode too."""
    if codes is None or not codes.wanted(base, sha):
        return decode(data, max_pixels)
    try:
        img, full = decode_both(data, max_pixels)
    except ImageError as exc:
        codes.failed(base, exc)
        raise
    codes.read(base, sha, full)
    return img


def _codes_only(data: bytes, max_pixels: int, base: Row, sha: str, codes: CodeSink) -> None:
    """Codes of an image whose signature is reused (its bytes unchanged)."""
    if codes.wanted(base, sha):
        try:
            picture: Decoded | Exception = decode_for_reading(data, max_pixels)
        except Exception as exc:  # the reused signature stands; the read is counted failed
            picture = exc
        codes.read(base, sha, picture)


def compute_batch(batch: Path, prior: Path | None, out_signatures: Path, out_rejects: Path, *,
                  extractor: FeatureExtractor | None, max_pixels: int,
                  read_timeout: float,
                  progress: Callable[[int], None] | None = None,
                  codes: CodeSink | None = None) -> BatchResult:
    """Compute the signatures of one batch of catalog rows and write them atomically.

    `codes`: also read each image's codes (pack reading on), from the same read and decode.
    """
    rows = read_table(batch, CATALOG).to_pylist()
    prior_rows = _prior_rows(prior, [r["image_id"] for r in rows])
    sigs, rejects = _Rows(SIGNATURES), _Rows(REJECTS)
    pending: list[tuple[Row, Pixels]] = []
    computed: list[Row] = []
    greys: list[np.ndarray] = []
    reused = 0
    now = datetime.now(UTC)
    reads = read_all([cat["uri"] for cat in rows], read_timeout)  # one reader thread, ahead
    for cat, data in zip(rows, reads, strict=True):
        base = {"client_id": cat["client_id"], "image_id": cat["image_id"], "uri": cat["uri"]}
        try:
            if isinstance(data, ImageError):
                if codes is not None:
                    codes.failed(base, data)
                raise data
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
            old = prior_rows.get(cat["image_id"])
            if old is not None and _reusable(old, sha, size, extractor):
                if codes is not None:
                    _codes_only(data, max_pixels, base, sha, codes)
                sigs.add(old)
                reused += 1
                continue
            img = _decode(data, max_pixels, base, sha, codes)
            pixels = Pixels(np.asarray(img.rgb))  # decode's working copies are RGB
            grey, detail, thumb = pixel_features(img.rgb, pixels)
        except ImageError as exc:
            rejects.add({**base, "stage": "signatures", "reason": str(exc)})
            continue
        except Exception as exc:  # one bad image must not fail the batch
            rejects.add({**base, "stage": "signatures",
                         "reason": f"unexpected error: {type(exc).__name__}: {exc}"})
            continue
        finally:
            if progress:
                progress(1)
        row = _signature_row(cat, sha, size, img.width, img.height, detail, thumb, now)
        computed.append(row)
        greys.append(grey)
        if extractor is not None:
            row["fv_model"] = extractor.model_id
            pending.append((row, pixels))
            if len(pending) >= FV_CHUNK:
                _embed_pending(pending, extractor)
    if extractor is not None:
        _embed_pending(pending, extractor)
    _set_hashes(computed, greys)
    for row in computed:
        sigs.add(row)
    write_table(sigs.table(), out_signatures)
    write_table(rejects.table(), out_rejects)
    return BatchResult(len(computed), reused, len(rejects.cols["image_id"]))


def stored_by_id(run_dir: Path, column: str, ids: list[str]) -> dict[str, Any]:
    """One column (`detail`, `thumb`, ...) of a run's consolidated signatures, by image id,
    for these images only: verification and `npimage nearest` need a few rows, not all."""
    if not ids:
        return {}
    sigs = read_parts(run_dir / "signatures", SIGNATURES, "shard-*.parquet",
                      columns=["image_id", column], ids=ids)
    return dict(zip(sigs["image_id"].to_pylist(), sigs[column].to_pylist(), strict=True))
