"""The one reader of truth files, for `npimage evaluate` and `npimage fit-weights`.

Two formats (CSV with a header; see docs/QUALITY.md):
- groups: `image_id,group_id[,source,kind,expected_band,product,query]`: images of one
  group are versions of one photo; `expected_band` (a band name, or empty) is the band
  the pair (source, image) must reach, source defaulting to group_id.
- pairs: `image_id,match_image_id,label`: label a band name (a duplicate that must reach
  that band), a yes-word (1, true, yes, y, duplicate, positive: a duplicate, expected
  `retouched`) or a no-word (0, false, no, n, different, negative, or empty: a pair of
  different photos).

One rule for every reader: any other label or expected band is an error naming the file,
the line and the words allowed (never guessed to be a positive or a negative).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from npimage.bands import BANDS
from npimage.errors import TruthFileError

BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)
POSITIVE_WORDS = frozenset({"1", "true", "yes", "y", "duplicate", "positive"})
NEGATIVE_WORDS = frozenset({"0", "false", "no", "n", "different", "negative", ""})
#: The band a yes-word stands for.
DUPLICATE_BAND = "retouched"
_ALLOWED = (f"a band ({', '.join(BAND_NAMES)}), 1/true/yes/duplicate for a duplicate, "
            "0/false/no/different or empty for different photos")


@dataclass(frozen=True)
class TruthRows:
    """The rows of a truth file and its format."""

    path: Path
    kind: Literal["groups", "pairs"]
    rows: list[dict[str, str]]

    def where(self, index: int) -> str:
        """`file:line` of row `index` (the header is line 1)."""
        return f"{self.path}:{index + 2}"


def read_truth(path: Path | str) -> TruthRows:
    """Rows of a truth CSV, with its format told by the header."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = set(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise TruthFileError(f"truth file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TruthFileError(f"cannot read truth file {path}: {exc}") from None
    if {"image_id", "group_id"} <= header:
        return TruthRows(path, "groups", rows)
    if {"image_id", "match_image_id", "label"} <= header:
        return TruthRows(path, "pairs", rows)
    raise TruthFileError(f"{path}: header must be image_id,group_id[,...] or "
                         f"image_id,match_image_id,label (got {sorted(header)})")


def pair_label(label: str | None, where: str) -> str | None:
    """The band a pairs-file label expects (a positive), or None for a negative."""
    word = (label or "").strip().lower()
    if word in BAND_NAMES:
        return word
    if word in POSITIVE_WORDS:
        return DUPLICATE_BAND
    if word in NEGATIVE_WORDS:
        return None
    raise TruthFileError(f"{where}: unknown label {label!r}", hint=f"use {_ALLOWED}")


def expected_band(value: str | None, where: str) -> str | None:
    """The band a groups-file row's expected_band names, None when empty."""
    word = (value or "").strip()
    if not word:
        return None
    if word not in BAND_NAMES:
        raise TruthFileError(f"{where}: unknown expected_band {value!r}",
                             hint=f"use one of {', '.join(BAND_NAMES)} or leave it empty")
    return word


def is_yes(value: str | None) -> bool:
    """Whether a flag column (e.g. `query`) says yes."""
    return (value or "").strip().lower() in POSITIVE_WORDS
