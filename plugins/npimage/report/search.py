"""Search index of the report: image ids, product ids and references, split by prefix.

A report opened from disk (file://) cannot fetch() JSON, so the index is a set of small
JavaScript files that the search box loads with <script src> as the user types. Keys are
normalised (NFKC, lower case; the page does the same) and cut into shards by prefix: a
shard holds every key starting with its prefix, and a prefix with too many keys is split
by its next character. `manifest.js` lists the shards; a query needs only the shards
whose prefix it starts with (or that start with it), so typing an id loads a few KB
whatever the size of the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from npimage.report.data import ImageRow, ProductRow

SEARCH_DIR = "search"
#: Entries per shard before it is split: ~2000 entries is ~150 KB of script at most.
MAX_SHARD = 2000
#: A prefix is never split past this length (many equal keys stay in one shard).
MAX_DEPTH = 32


def normalise(text: str) -> str:
    """The form keys are compared in; search.js applies the same (NFKC, lower case)."""
    return unicodedata.normalize("NFKC", text).lower()


@dataclass(frozen=True, slots=True)
class Entry:
    """One search hit: what was matched, of which kind, where it leads, a short note."""

    key: str
    label: str
    kind: str  # "image" | "product" | "reference"
    href: str  # relative to the report root
    note: str


@dataclass(frozen=True, slots=True)
class Shard:
    """Entries whose keys start with `prefix` (or equal it, when `exact`)."""

    prefix: str
    exact: bool
    entries: Sequence[Entry]

    @property
    def file(self) -> str:
        """File name of the shard: a hash, as prefixes may hold any character."""
        tag = f"{int(self.exact)}\0{self.prefix}"
        return hashlib.blake2b(tag.encode(), digest_size=8).hexdigest() + ".js"


def entries(images: Sequence[ImageRow], products: Sequence[ProductRow]) -> list[Entry]:
    """Every searchable key, sorted by normalised key: ids of images and products, references."""
    out = [Entry(normalise(i.image_id), i.image_id, "image", i.page, i.product_id) for i in images]
    for prod in products:
        note = f"{prod.n_images} image{'s' if prod.n_images != 1 else ''}"
        out.append(Entry(normalise(prod.product_id), prod.product_id, "product", prod.page, note))
        out.extend(
            Entry(normalise(ref), ref, "reference", prod.page, f"product {prod.product_id}")
            for ref in prod.references
        )
    out = [e for e in out if e.key]
    out.sort(key=lambda e: (e.key, e.kind, e.label))
    return out


def shards(items: Sequence[Entry], max_shard: int = MAX_SHARD) -> list[Shard]:
    """Cut key-sorted `items` into prefix shards of at most `max_shard` entries."""
    return list(_split(items, 0, len(items), 0, "", max_shard))


def _split(
    items: Sequence[Entry], lo: int, hi: int, depth: int, prefix: str, max_shard: int
) -> Iterator[Shard]:
    """Shards of items[lo:hi], which all start with `prefix` (len == depth)."""
    if hi - lo <= max_shard or depth >= MAX_DEPTH:
        yield Shard(prefix, False, items[lo:hi])
        return
    start = lo
    while start < hi and len(items[start].key) == depth:  # keys equal to the prefix sort first
        start += 1
    if start > lo:
        yield Shard(prefix, True, items[lo:start])
    while start < hi:
        char = items[start].key[depth]
        end = start
        while end < hi and items[end].key[depth] == char:
            end += 1
        yield from _split(items, start, end, depth + 1, prefix + char, max_shard)
        start = end


def _js(value: object) -> str:
    """JSON that is also safe JavaScript (ASCII only, so no U+2028 surprises)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def shard_script(shard: Shard) -> str:
    """Text of a shard file: registers its entries with the page's search box."""
    rows = [[e.label, e.kind[0], e.href, e.note] for e in shard.entries]
    return f"NPR.shard({_js(shard.file)},{_js(rows)});\n"


def manifest_script(all_shards: Sequence[Shard]) -> str:
    """Text of manifest.js: every shard's prefix, kind, file and size."""
    rows = [[s.prefix, int(s.exact), s.file, len(s.entries)] for s in all_shards]
    return f"NPR.manifest({_js(rows)});\n"
