"""Signatures: per image, the byte signature, three perceptual hashes and an optional FV.

One batch of catalog rows in, one Parquet of signatures and one of rejects out. Each image
is read once and decoded once; the decoded picture feeds the hashes and the FV model.
A stored signature is reused when size + sha256 show the bytes have not changed (and it
carries the FV this run needs), so unchanged images are never decoded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from npimage.fv import FeatureExtractor
from npimage.ingest.decode import ImageError, decode, read_bytes
from npimage.matching.detail import detail_signature, is_current
from npimage.matching.hashing import image_hashes
from npimage.schemas import CATALOG, REJECTS, SIGNATURES
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


def _current_detail(row: dict[str, Any]) -> bool:
    """Does a stored signature carry a detail signature of this version (else recompute)?"""
    return is_current(row.get("detail"))


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


def _embed_pending(pending: list[tuple[Row, Image.Image]], extractor: FeatureExtractor,
                   sigs: _Rows) -> None:
    """Run the FV model on the decoded pictures waiting in `pending`, then store their rows."""
    if not pending:
        return
    vectors = extractor.embed([img for _, img in pending]).astype(np.float16)
    for (row, _), vec in zip(pending, vectors, strict=True):
        row["fv"] = vec
        sigs.add(row)
    pending.clear()


def compute_batch(batch: Path, prior: Path | None, out_signatures: Path, out_rejects: Path, *,
                  extractor: FeatureExtractor | None, max_pixels: int,
                  read_timeout: float,
                  progress: Callable[[int], None] | None = None) -> BatchResult:
    """Compute the signatures of one batch of catalog rows and write them atomically."""
    rows = read_table(batch, CATALOG).to_pylist()
    prior_rows = _prior_rows(prior, [r["image_id"] for r in rows])
    sigs, rejects = _Rows(SIGNATURES), _Rows(REJECTS)
    pending: list[tuple[Row, Image.Image]] = []
    reused = 0
    now = datetime.now(UTC)
    for cat in rows:
        base = {"client_id": cat["client_id"], "image_id": cat["image_id"], "uri": cat["uri"]}
        try:
            data = read_bytes(cat["uri"], read_timeout)
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
            old = prior_rows.get(cat["image_id"])
            if old and old["sha256"] == sha and old["size_bytes"] == size and _current_detail(
                    old) and (
                    extractor is None or (old["fv"] is not None
                                          and old["fv_model"] == extractor.model_id)):
                sigs.add(old)
                reused += 1
                continue
            img = decode(data, max_pixels)
            ah, dh, ph = image_hashes(img.rgb)
            detail = detail_signature(img.rgb)
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
        row = {"client_id": cat["client_id"], "image_id": cat["image_id"], "sha256": sha,
               "size_bytes": size, "width": img.width, "height": img.height, "ahash": ah,
               "dhash": dh, "phash": ph, "fv": None, "fv_model": None, "computed_at": now,
               "detail": detail}
        if extractor is None:
            sigs.add(row)
        else:
            row["fv_model"] = extractor.model_id
            pending.append((row, img.rgb))
            if len(pending) >= FV_CHUNK:
                _embed_pending(pending, extractor, sigs)
    if extractor is not None:
        _embed_pending(pending, extractor, sigs)
    write_table(sigs.table(), out_signatures)
    written = len(sigs.cols["image_id"])
    write_table(rejects.table(), out_rejects)
    return BatchResult(written - reused, reused, len(rejects.cols["image_id"]))

