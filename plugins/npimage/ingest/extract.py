"""Extract: turn a source (folder of images or manifest CSV) into the catalog Parquet.

The catalog is a snapshot of the client's images at the time of the run: ids, product,
reference and where the bytes are. Rows that cannot be catalogued (missing fields,
duplicate ids, files that are not images) become `rejects` rows with the reason.
The PostgreSQL source of NextPage lives in `npimage.backend`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from npimage.schemas import CATALOG, FAMILIES, REJECTS
from npimage.storage.parquet_io import read_table, write_table
from npimage.storage.store import Location, is_remote, location

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)
MANIFEST_REQUIRED = ("image_id", "product_id", "uri")
#: Products' names, when the source has them (manifest column `name`, np_product.name):
#: beside the catalog snapshot, for the review application.
PRODUCT_NAMES = pa.schema([("product_id", pa.string()), ("name", pa.string())])


def product_names_path(catalog: Location) -> Location:
    """Where the product names of a catalog snapshot are kept (same run folder)."""
    return location(catalog).with_name("product_names.parquet")

#: Longest identifier kept (image, product, reference) and longest uri, in characters.
#: Real ids are tens of characters and signed object-store URLs a few thousand; longer
#: values are broken data, and a 100 000-character key costs every index and join.
MAX_ID_CHARS = 1_000
MAX_URI_CHARS = 8_192
#: Checked catalog fields and their length limits.
FIELD_LIMITS = {"image_id": MAX_ID_CHARS, "product_id": MAX_ID_CHARS,
                "reference": MAX_ID_CHARS, "uri": MAX_URI_CHARS}
#: C0 and C1 control characters and DEL (a NUL breaks PostgreSQL text, a newline a CSV).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_RE2 = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"
#: Characters of a refused value kept in its rejects row.
_SHOWN_CHARS = 200

#: NextPage naming "<GTIN>_PIECE_<nn>", optionally prefixed by the image id ("266846 0764…").
NEXTPAGE_NAME = re.compile(
    r"^(?:(?P<prefix>\d+)[ _-]+)?(?P<gtin>\d{8,14})[ _]PIECE[ _](?P<piece>\d+)$", re.IGNORECASE
)


@dataclass(frozen=True)
class ExtractResult:
    """What extract wrote: the catalog and its rejects, with counts."""

    catalog: Path
    rejects: Path
    n_images: int
    n_rejects: int


def parse_nextpage_name(stem: str) -> tuple[str, str | None]:
    """(product_id, reference) of a file stem: the GTIN for NextPage names, else the stem."""
    m = NEXTPAGE_NAME.match(stem.strip())
    if m:
        return m["gtin"], m["gtin"]
    return stem, None


def _stat(path: Path) -> tuple[int | None, datetime | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)


def _walk(root: Path) -> Iterator[Path]:
    """Every regular non-hidden file under root, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


class _Collector:
    """Accumulates catalog rows and rejects, enforcing unique image ids."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.rows: dict[str, list[Any]] = {n: [] for n in CATALOG.names}
        self.rejects: dict[str, list[Any]] = {n: [] for n in REJECTS.names}
        self.seen: set[str] = set()
        self.names: dict[str, str] = {}  # product_id -> name (manifest column `name`)

        self.families: dict[str, str | None] | None = None  # product -> family (manifest)

    def reject(self, image_id: str | None, uri: str | None, reason: str) -> None:
        for key, value in zip(
            REJECTS.names, (self.client_id, shown(image_id), shown(uri), "extract", reason),
            strict=True
        ):
            self.rejects[key].append(value)

    def add(self, image_id: str, product_id: str, reference: str | None, uri: str,
            size: int | None, modified: datetime | None) -> None:
        if image_id in self.seen:
            self.reject(image_id, uri, "duplicate image_id: the first occurrence is kept")
            return
        self.seen.add(image_id)
        values = (self.client_id, image_id, product_id, reference, uri, size, modified)
        for key, value in zip(CATALOG.names, values, strict=True):
            self.rows[key].append(value)

    def name(self, product_id: str, name: str | None) -> None:
        """Remember a product's name (the first non-empty one given wins)."""
        if name and product_id not in self.names:
            self.names[product_id] = name

    def family(self, product_id: str, family: str | None, lineno: int, uri: str) -> None:
        """Record a product's family (manifest `family` column); a conflicting later value
        is a `rejects` row (stage `family`) and the first one is kept."""
        assert self.families is not None
        known = self.families.get(product_id)
        if product_id not in self.families or (known is None and family):
            self.families[product_id] = family
        elif family and family != known:
            self.rejects["client_id"].append(self.client_id)
            for key, value in (("image_id", None), ("uri", uri), ("stage", "family"),
                               ("reason", f"manifest line {lineno}: family {family!r} of "
                                          f"product {product_id!r} differs from {known!r} "
                                          "given before: the first is kept")):
                self.rejects[key].append(value)

    def write_families(self, path: Path | None) -> None:
        """families.parquet when the manifest had a `family` column, else no file."""
        if path is None:
            return
        if self.families is None:
            path.unlink(missing_ok=True)
            return
        ids = sorted(self.families)
        write_table(pa.table({"client_id": [self.client_id] * len(ids), "product_id": ids,
                              "family": [self.families[i] for i in ids]}, schema=FAMILIES), path)

    def write(self, catalog: Path, rejects: Path) -> ExtractResult:
        cat, bad = screen_catalog(pa.table(self.rows, schema=CATALOG), self.client_id)
        rej = pa.concat_tables([pa.table(self.rejects, schema=REJECTS), bad])
        write_table(cat, catalog)
        write_table(rej, rejects)
        write_table(pa.table({"product_id": list(self.names), "name": list(self.names.values())},
                             schema=PRODUCT_NAMES), product_names_path(catalog))
        return ExtractResult(catalog, rejects, cat.num_rows, rej.num_rows)


def _absolute(path: Path) -> Path:
    """The resolved path; only made absolute when it cannot be resolved (a symlink loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return Path(os.path.abspath(path))


class _RealPaths:
    """`_absolute` of the files of one walked tree, each directory resolved once.

    Path.resolve walks every component of every path (a dozen lstat calls and as many
    Python steps per file: half of extract's time on 2 000 files); here a file's directory
    is resolved once for all its files, and only a file that is a symbolic link is
    followed (its target's directory resolved once too). Same result as `_absolute`: a
    link loop, or any error, falls back to it.
    """

    def __init__(self) -> None:
        self.dirs: dict[str, str] = {}

    def __call__(self, path: Path) -> Path:
        try:
            return Path(self._real(os.fspath(path), 0))
        except (OSError, RuntimeError):
            return _absolute(path)

    def _dir(self, head: str) -> str:
        real = self.dirs.get(head)
        if real is None:
            real = self.dirs[head] = os.path.realpath(head)
        return real

    def _real(self, path: str, links: int) -> str:
        head, name = os.path.split(path)
        full = os.path.join(self._dir(head), name)
        if name in ("", ".", ".."):  # not a plain name: the standard walk
            return os.path.realpath(full)
        if not os.path.islink(full):
            return full
        if links >= _MAX_LINKS:
            raise RuntimeError(f"too many levels of symbolic links: {path}")
        return self._real(os.path.join(os.path.dirname(full), os.readlink(full)), links + 1)


#: Symbolic links followed for one file before it counts as a loop (Linux's ELOOP limit).
_MAX_LINKS = 40


def _text(path: Path) -> str | None:
    """`path` as text when it is valid UTF-8 (Parquet strings must be), else None."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return str(path)


def _shown(path: Path) -> str:
    """A printable form of any path: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _from_directory(root: Path, out: _Collector) -> None:
    real = _RealPaths()
    for path in _walk(root):
        rel = path.relative_to(root)
        uri = _text(real(path))
        if uri is None:
            out.reject(_shown(rel), _shown(_absolute(path)),
                       "file name is not valid UTF-8: rename the file")
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ext = path.suffix or "none"
            out.reject(rel.as_posix(), uri, f"not an image file extension ({ext})")
            continue
        image_id = rel.with_suffix("").as_posix()
        product_id, reference = parse_nextpage_name(path.stem)
        out.add(image_id, product_id, reference, uri, *_stat(path))


def _store_listing(root: Location) -> dict[str, tuple[int | None, datetime | None]]:
    """uri -> (size, modified) of every object under a folder of an object store (one LIST)."""
    out = {}
    for key, info in root.fs.find(root.path, detail=True).items():
        if info.get("type") == "directory":
            continue
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        if isinstance(modified, (int, float)):
            modified = datetime.fromtimestamp(modified, UTC)
        elif isinstance(modified, str):
            modified = datetime.fromisoformat(modified)
        out[root.fs.unstrip_protocol(key)] = (info.get("size"), modified)
    return out


def _from_store(root: Location, out: _Collector) -> None:
    """A folder on an object store (s3://...): every non-hidden object under it, by name."""
    base = str(root).rstrip("/") + "/"
    for uri, stat in sorted(_store_listing(root).items()):
        rel = PurePosixPath(uri.removeprefix(base))
        if any(part.startswith(".") for part in rel.parts):
            continue
        if rel.suffix.lower() not in IMAGE_EXTENSIONS:
            out.reject(rel.as_posix(), uri, f"not an image file extension ({rel.suffix or 'none'})")
            continue
        product_id, reference = parse_nextpage_name(rel.stem)
        out.add(rel.with_suffix("").as_posix(), product_id, reference, uri, *stat)


def _resolve_uri(uri: str, base: Path) -> str:
    if "://" in uri:
        return uri
    if is_remote(base):  # a manifest on an object store: relative to its folder there
        return str(base / uri)
    path = Path(uri)
    return str(path if path.is_absolute() else _absolute(base / path))


def shown(value: str | None) -> str | None:
    """A refused value as stored in rejects: control characters escaped, long ones cut."""
    if value is None:
        return None
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value[:_SHOWN_CHARS])
    return text + f"... ({len(value)} characters)" if len(value) > _SHOWN_CHARS else text


def field_problem(name: str, value: str | None) -> str | None:
    """Why a catalog field cannot be kept (a control character, too long), or None."""
    if value is None:
        return None
    if len(value) > FIELD_LIMITS[name]:
        return f"{name} too long: {len(value)} characters > limit {FIELD_LIMITS[name]}"
    m = _CONTROL.search(value)
    if m:
        return (f"{name} contains a control character (U+{ord(m.group()):04X} at "
                f"position {m.start()}): fix the source")
    return None


def screen_catalog(catalog: pa.Table, client_id: str) -> tuple[pa.Table, pa.Table]:
    """(rows kept, rejects) of a catalog: refuse ids and uris that no store can hold.

    Every source goes through here (folder, manifest, backend), so a NUL or a newline in
    an id, or a megabyte-long field, is one rejects row instead of a failed load later.
    """
    bad = pa.array([False] * catalog.num_rows, pa.bool_())
    for name, limit in FIELD_LIMITS.items():
        col = catalog[name]
        hit = pc.or_(pc.greater(pc.utf8_length(col), limit),
                     pc.match_substring_regex(col, _CONTROL_RE2))
        bad = pc.or_(bad, pc.fill_null(hit, False))
    if not pc.any(bad).as_py():
        return catalog, REJECTS.empty_table()
    rows = catalog.filter(bad).to_pylist()
    reasons = ["; ".join(p for p in (field_problem(n, r[n]) for n in FIELD_LIMITS) if p)
               for r in rows]
    rejects = pa.table({"client_id": [client_id] * len(rows),
                        "image_id": [shown(r["image_id"]) for r in rows],
                        "uri": [shown(r["uri"]) for r in rows],
                        "stage": ["extract"] * len(rows), "reason": reasons}, schema=REJECTS)
    return catalog.filter(pc.invert(bad)), rejects


def screen_catalog_file(catalog: Location, rejects: Location, client_id: str) -> int:
    """Screen a catalog Parquet in place (backend sources); write the rejects; count them."""
    kept, bad = screen_catalog(read_table(catalog, CATALOG), client_id)
    if bad.num_rows:
        write_table(kept, catalog, CATALOG)
    write_table(bad, rejects, REJECTS)
    return int(bad.num_rows)


def _rows(reader: csv.DictReader[str], out: _Collector
          ) -> Iterator[tuple[int, dict[str | Any, str | Any]]]:
    """(line number, row) of a manifest; a line the csv module refuses is one reject."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over the csv module's limit: one bad line
            line = reader.line_num + 1  # the refused line is not counted by the reader
            out.reject(f"<line {line}>", None, f"manifest line {line}: {exc}")
            continue
        yield reader.line_num, row


def _from_manifest(manifest: Path, out: _Collector) -> None:
    # A manifest on an object store: sizes and dates of the objects beside it, in one LIST.
    remote = _store_listing(manifest.parent) if is_remote(manifest) else {}
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in MANIFEST_REQUIRED if c not in header]
        if missing:
            raise ValueError(
                f"manifest {manifest}: missing column(s) {missing}; "
                f"the header must contain {', '.join(MANIFEST_REQUIRED)} "
                f"(and optionally reference, name)"
            )
        reader.fieldnames = header
        if "family" in header:
            out.families = {}
        for lineno, row in _rows(reader, out):
            image_id = (row.get("image_id") or "").strip()
            product_id = (row.get("product_id") or "").strip()
            raw_uri = (row.get("uri") or "").strip()
            empty = [c for c, v in (("image_id", image_id), ("product_id", product_id),
                                    ("uri", raw_uri)) if not v]
            if empty:
                out.reject(image_id or f"<line {lineno}>", raw_uri or None,
                           f"manifest line {lineno}: empty {', '.join(empty)}")
                continue
            uri = _resolve_uri(raw_uri, manifest.parent)
            size, modified = _stat(Path(uri)) if "://" not in uri else remote.get(uri,
                                                                                 (None, None))
            reference = (row.get("reference") or "").strip() or None
            out.add(image_id, product_id, reference, uri, size, modified)
            out.name(product_id, (row.get("name") or "").strip() or None)

            if out.families is not None:
                out.family(product_id, (row.get("family") or "").strip() or None, lineno, uri)


def extract_catalog(client_id: str, source: str | Path, catalog: Path,
                    rejects: Path, families: Path | None = None) -> ExtractResult:
    """Catalogue a folder of images or a manifest CSV into `catalog` and `rejects` Parquet.

    `source` is a local path or an fsspec URL (s3://bucket/images/, s3://bucket/m.csv).
    A manifest with a `family` column also writes `families` (product -> family).
    """
    src = location(source)
    out = _Collector(client_id)
    if is_remote(src) and src.is_dir():
        _from_store(src, out)
    elif src.is_dir():
        _from_directory(src, out)
    elif src.is_file() and src.suffix.lower() == ".csv":
        try:
            _from_manifest(src, out)
        except UnicodeDecodeError as exc:
            raise ValueError(f"manifest {src} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start}): save it as UTF-8 CSV") from exc
    elif not src.exists():
        raise FileNotFoundError(f"source not found: {src}")
    else:
        raise ValueError(f"source must be a folder of images or a manifest .csv, got {src}")
    out.write_families(families)
    return out.write(catalog, rejects)
