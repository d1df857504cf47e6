"""The layout of a data dir: the one module that knows where every file of npimage lives.

    <data_dir>/
        warehouse.duckdb                 views over the published files (local data dir only)
        clients/<client>/
            current.json                 the published run: its files per table, the runs
                                         history; replaced in one atomic write = the commit
            runs/<run>/                  everything one run writes (context.json, catalog,
                                         plan/, sig_batches/, signatures/, matches/, ...)
        reports/<client>/                the HTML review report
        demo_catalogue/                  `npimage demo`

`<client>` and `<run>` are `safe_name()`s of the ids: file-system safe and distinct for
distinct ids. Any other module asks this one for a path instead of joining names itself.
Scratch space and the model cache are local to each worker (`store.scratch_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from npimage.storage.store import Location, location

_HASHED_TAIL = re.compile(r"-[0-9a-f]{10}$")

POINTER = "current.json"
WAREHOUSE_FILE = "warehouse.duckdb"


def safe_name(value: str) -> str:
    """A file-system-safe folder name for an identifier, distinct for distinct identifiers.

    A plain name (at most 40 letters, digits, `.`, `_`, `-`, not starting or ending with
    `.` or `_`) is used as is;
    any other gets a readable slug plus the first 10 hex digits of its SHA-256. A plain name
    that itself ends in `-<10 hex digits>` is hashed too, so it can never equal the hashed
    name of another id (`a/b` -> `a_b-c14cddc033`, while the id `a_b-c14cddc033` ->
    `a_b-c14cddc033-<its own digest>`).
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._")[:40] or "x"
    if slug == value and not _HASHED_TAIL.search(value):
        return value
    return f"{slug}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Layout:
    """Paths of one data dir (a local folder or an fsspec URL such as s3://bucket/npimage)."""

    data_dir: str

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> Layout:
        return cls(str(data_dir))

    @property
    def root(self) -> Location:
        return location(self.data_dir)

    def client_dir(self, client_id: str) -> Location:
        return self.root / "clients" / safe_name(client_id)

    def run_dir(self, client_id: str, run_id: str) -> Location:
        return self.client_dir(client_id) / "runs" / safe_name(run_id)

    def pointer(self, client_id: str) -> Location:
        """`current.json`: the client's published run (the next incremental run's baseline)."""
        return self.client_dir(client_id) / POINTER

    def report_dir(self, client_id: str) -> Location:
        return self.root / "reports" / safe_name(client_id)

    @property
    def warehouse_file(self) -> Location:
        return self.root / WAREHOUSE_FILE

    @property
    def demo_dir(self) -> Location:
        return self.root / "demo_catalogue"

    def lock_key(self, client_id: str) -> str:
        """Name of the client's run lock in a shared lock table (one per data dir)."""
        return f"{self.data_dir.rstrip('/')}#client:{client_id}"

    def pointers(self) -> list[Location]:
        """The `current.json` of every client that has published, sorted by folder."""
        clients = self.root / "clients"
        if not clients.exists():
            return []
        return sorted((d / POINTER for d in clients.iterdir() if (d / POINTER).exists()),
                      key=str)

    def read_pointer(self, client_id: str) -> dict[str, Any] | None:
        """The client's `current.json` as a dict, or None before its first publish."""
        return read_json(self.pointer(client_id))

    def published_run_dir(self, client_id: str) -> Location | None:
        """Run folder of the client's published run, or None."""
        ref = self.read_pointer(client_id)
        return self.run_dir(client_id, ref["run_id"]) if ref else None

    def resolve(self, relative: str) -> Location:
        """A path stored relative to the data dir (in a pointer) as a location."""
        return self.root / relative

    def relative(self, path: Location) -> str:
        """`path` relative to the data dir, for pointers (a data dir may move)."""
        root, text = str(self.root).rstrip("/"), str(path)
        if not text.startswith(root + "/"):
            raise ValueError(f"{text} is not under the data dir {root}")
        return text[len(root) + 1:]


def read_json(path: Location) -> dict[str, Any] | None:
    """A JSON file's content, or None when it does not exist."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except FileNotFoundError:
        return None
