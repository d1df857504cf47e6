"""Where npimage's files live: a local folder or any fsspec store (s3://, gs://, memory://).

One home for the question "local or remote?". A location is a `pathlib.Path` for a local
folder and a `upath.UPath` (universal_pathlib, the library under Airflow's
ObjectStoragePath) for a URL; both support `/`, `exists()`, `glob()`, `read_text()`. What
differs (atomic replace, Parquet I/O through pyarrow, libraries that need a real local
file) goes through the functions here.

Object stores are configured the standard way, never by npimage: for S3 the AWS variables
(`AWS_ENDPOINT_URL` for MinIO/Ceph/moto, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`) or an fsspec config file (`FSSPEC_CONFIG_DIR`, `FSSPEC_S3_*`).

Scratch space (downloads for libraries that need a local file) and the model cache are
local and disposable: `NPIMAGE_SCRATCH_DIR` (default: the system temporary folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

#: Object stores whose fsspec driver caches directory listings (switched off).
_LISTING_CACHES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

#: A local folder (pathlib.Path) or a remote one (upath.UPath). Both have pathlib's API.
Location = Any


def is_url(value: str | os.PathLike[str]) -> bool:
    """Whether `value` names a remote location (`scheme://...`, file:// excepted)."""
    text = str(value)
    return "://" in text and not text.startswith("file://")


def location(value: str | os.PathLike[str]) -> Location:
    """The location of a folder or file: a Path when local, a UPath for a URL.

    `s3://bucket/x` stays a URL (never the local folder `s3:/bucket/x`); `file://` URLs
    and plain paths are local.
    """
    if isinstance(value, Path) and not is_remote(value):
        return Path(value)
    text = str(value)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    if is_url(text):
        from upath import UPath

        scheme = text.split("://", 1)[0]
        # Other hosts write the same store: never answer from a stale directory listing.
        options: dict[str, Any] = ({"use_listings_cache": False}
                                   if scheme in _LISTING_CACHES else {})
        return UPath(text, **options)
    return Path(text)


def is_remote(path: Location) -> bool:
    """Whether a location is on an object store (not a local folder)."""
    return getattr(path, "protocol", "") not in ("", "file", "local")


def as_uri(path: Location) -> str:
    """A string for the location that `location()` reads back (XCom, JSON, SQL)."""
    return str(path)


def arrow(path: Location) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it, for pyarrow.parquet / pyarrow.dataset."""
    if not is_remote(path):
        return pafs.LocalFileSystem(), str(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(path.fs)), path.path


def mkdirs(path: Location) -> None:
    """Create a folder and its parents (object stores have no folders: nothing to do)."""
    if not is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def write_bytes_atomic(path: Location, data: bytes) -> None:
    """Replace a file so that readers see the old content or the new, never a part.

    Local: a temporary file in the same folder, fsynced, then renamed; the temporary file
    is removed whatever fails (a full disk leaves nothing behind). Object store: one PUT,
    which is atomic there.
    """
    if is_remote(path):
        path.fs.pipe_file(path.path, data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Location, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: Location) -> None:
    """Delete a folder and everything under it (absent: nothing to do)."""
    if is_remote(path):
        if path.fs.exists(path.path):
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def scratch_dir() -> Path:
    """This worker's local, disposable scratch folder (`NPIMAGE_SCRATCH_DIR`)."""
    root = os.environ.get("NPIMAGE_SCRATCH_DIR") or os.path.join(tempfile.gettempdir(),
                                                                   "npimage-scratch")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def local_copy(path: Location | None) -> Iterator[Path | None]:
    """`local_file` that passes None through (an optional input)."""
    if path is None:
        yield None
        return
    with local_file(path) as local:
        yield local


@contextmanager
def local_output(path: Location) -> Iterator[Path]:
    """A local path to write a file to, for libraries that only write local files.

    Local: `path` itself. Remote: a scratch file, uploaded to `path` in one PUT when the
    block ends without error, and deleted either way.
    """
    if not is_remote(path):
        yield Path(path)
        return
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(), prefix="up-"))
    try:
        local = folder / path.name
        yield local
        if local.exists():
            path.fs.put_file(str(local), path.path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_output_dir(path: Location) -> Iterator[Path]:
    """A local folder to write into: `path` itself when local, else a scratch folder whose
    files are uploaded under `path` when the block ends without error."""
    if not is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(), prefix="updir-"))
    try:
        yield folder
        upload_tree(folder, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_file(path: Location) -> Iterator[Path]:
    """A local path holding the file's bytes, for libraries that only read local files.

    Local files are used where they are; remote ones are downloaded into the scratch folder
    and deleted on exit.
    """
    if not is_remote(path):
        yield Path(path)
        return
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(), prefix="dl-"))
    try:
        local = folder / path.name
        path.fs.get_file(path.path, str(local))
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def upload_tree(local: Path, dest: Location) -> None:
    """Copy a local folder's files to `dest` (local or remote), replacing files there."""
    if not is_remote(dest):
        if Path(dest).resolve() != local.resolve():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        return
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        dest.fs.put_file(str(file), (dest / file.relative_to(local).as_posix()).path)
