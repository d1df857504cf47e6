"""Static HTML report (npimage.report): pages, escaping, pagination, cache, search index.

Each test renders from a small real DuckDB warehouse built here from the Arrow contracts
(npimage.schemas, plus run_id on images) with real pictures drawn by Pillow. Pages are
parsed with the standard library's HTML parser, and what they show is compared with the
warehouse tables.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from npimage import schemas
from npimage.report import render_report, search
from npimage.report.data import IMAGE_DIR, PRODUCT_DIR, page_path
from npimage.report.pages import list_href
from npimage.report.thumbs import PLACEHOLDER

CLIENT = "acme"
RUN = "run-2024-05-01"
WEIRD_PRODUCT = 'weird "prod" <&> ü'
WEIRD_A = 'img "quoted" <b>&amp; café 漢字 01'
WEIRD_B = "img 'single' <script>alert(1)</script> 02"

# (image_id, product_id, reference, picture recipe); recipe None = unreadable, "" = missing.
IMAGES = [
    ("4006381333931_PIECE_01", "4006381333931", "4006381333931", ("bottle", (200, 40, 40), 0)),
    ("4006381333931_PIECE_02", "4006381333931", "4006381333931", ("box", (200, 40, 40), 0)),
    ("4006381333948_PIECE_01", "4006381333948", "4006381333948", ("bottle", (200, 40, 40), 0)),
    ("4006381333955_PIECE_01", "4006381333955", None, ("bottle", (215, 60, 55), 8)),
    (WEIRD_A, WEIRD_PRODUCT, "REF-Ä<1>", ("box", (40, 80, 200), 0)),
    (WEIRD_B, WEIRD_PRODUCT, "REF-Ä<1>", ("box", (50, 95, 190), 4)),
    ("5012345678900_PIECE_01", "5012345678900", "5012345678900", ("circle", (30, 150, 70), 0)),
    ("5012345678900_broken", "5012345678900", "5012345678900", None),
    ("5012345678900_gone", "5012345678900", "5012345678900", ""),
    ("lonely_01", "lonely", None, ("circle", (120, 120, 120), 0)),
]

# One direction of each image pair: (a, b, score, band, dah, ddh, dph, dfv, same_bytes).
PAIRS = [
    ("4006381333931_PIECE_01", "4006381333948_PIECE_01", 1.0, "same", 1, 1, 1, 1, True),
    ("4006381333931_PIECE_01", "4006381333955_PIECE_01", 0.962, "retouched",
     0.97, 0.95, 0.94, 0.99, False),
    ("4006381333948_PIECE_01", "4006381333955_PIECE_01", 0.962, "retouched",
     0.97, 0.95, 0.94, 0.99, False),
    ("4006381333931_PIECE_01", "4006381333931_PIECE_02", 0.84, "similar",
     0.86, 0.8, 0.78, 0.9, False),
    (WEIRD_A, WEIRD_B, 0.913, "very_similar", 0.94, 0.9, 0.88, None, False),
    (WEIRD_A, "5012345678900_PIECE_01", 0.831, "similar", 0.84, 0.83, 0.8, None, False),
]

PRODUCT_PAIRS = [
    ("4006381333931", "4006381333948", 1.0, "same", 1,
     "4006381333931_PIECE_01", "4006381333948_PIECE_01"),
    ("4006381333931", "4006381333955", 0.962, "retouched", 1,
     "4006381333931_PIECE_01", "4006381333955_PIECE_01"),
    ("4006381333948", "4006381333955", 0.962, "retouched", 1,
     "4006381333948_PIECE_01", "4006381333955_PIECE_01"),
    (WEIRD_PRODUCT, "5012345678900", 0.831, "similar", 1, WEIRD_A, "5012345678900_PIECE_01"),
]


def draw(recipe: tuple[str, tuple[int, int, int], int], size: int = 400) -> Image.Image:
    """A product-like picture: a coloured shape on white, optionally shifted."""
    shape, colour, shift = recipe
    img = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(img)
    s = shift
    if shape == "bottle":
        pen.rectangle((150 + s, 60, 250 + s, 110), fill=(60, 60, 60))
        pen.rounded_rectangle((110 + s, 110, 290 + s, 360), radius=40, fill=colour)
        pen.rectangle((130 + s, 190, 270 + s, 260), fill="white")
    elif shape == "box":
        pen.polygon([(80 + s, 140), (220 + s, 90), (330 + s, 140), (190 + s, 190)], fill="#ddd")
        pen.polygon([(80 + s, 140), (190 + s, 190), (190 + s, 350), (80 + s, 290)], fill=colour)
        dark = tuple(int(c * 0.7) for c in colour)
        pen.polygon([(190 + s, 190), (330 + s, 140), (330 + s, 300), (190 + s, 350)], fill=dark)
    else:
        pen.ellipse((90 + s, 90, 310 + s, 310), fill=colour)
        pen.ellipse((160 + s, 160, 240 + s, 240), fill="white")
    return img


def _both_ways(pairs: list[tuple]) -> list[tuple]:
    out = []
    for a, b, *rest in pairs:
        out += [(a, b, *rest), (b, a, *rest)]
    return out


def image_match_rows() -> list[dict]:
    """image_matches rows: both directions, ranked by score within each image."""
    rows: dict[str, list[tuple]] = {}
    for a, b, *rest in _both_ways(PAIRS):
        rows.setdefault(a, []).append((b, *rest))
    out = []
    for image_id, matches in rows.items():
        matches.sort(key=lambda m: (-m[1], m[0]))
        for rank, (b, score, band, dah, ddh, dph, dfv, same) in enumerate(matches, start=1):
            out.append(dict(client_id=CLIENT, image_id=image_id, match_image_id=b, rank=rank,
                            score=score, band=band, dah=dah, ddh=ddh, dph=dph, dfv=dfv,
                            same_bytes=same, run_id=RUN))
    return out


def make_warehouse(root: Path, other_client: bool = True) -> Path:
    """A warehouse.duckdb with the contracts' tables, pictures under root/pictures."""
    pictures = root / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    catalog = []
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for n, (image_id, product_id, ref, recipe) in enumerate(IMAGES):
        path = pictures / f"p{n:02d}.jpg"
        if recipe is None:
            path.write_text("<html>not a picture</html>")
        elif recipe:
            draw(recipe).save(path, "JPEG", quality=90)
        size = path.stat().st_size if path.exists() else 1234
        catalog.append(dict(client_id=CLIENT, image_id=image_id, product_id=product_id,
                            reference=ref, uri=str(path), size_bytes=size, modified_at=stamp))
    # the exact copy really is the same file content
    (pictures / "p02.jpg").write_bytes((pictures / "p00.jpg").read_bytes())
    catalog[2]["size_bytes"] = catalog[0]["size_bytes"]
    if other_client:  # another client's rows must never show up
        catalog.append(dict(catalog[0], client_id="other", image_id="other_only"))
    products = [
        dict(client_id=CLIENT, product_id=a, match_product_id=b, score=s, band=band,
             n_image_pairs=n, best_image_id=bi, best_match_image_id=bm, run_id=RUN)
        for a, b, s, band, n, bi, bm in _both_ways(PRODUCT_PAIRS)
    ]
    # _both_ways keeps best_image_id of the first direction: swap it for the second.
    for row in products[1::2]:
        row["best_image_id"], row["best_match_image_id"] = (
            row["best_match_image_id"], row["best_image_id"])
    rejects = [dict(client_id=CLIENT, image_id="5012345678900_broken",
                    uri=catalog[7]["uri"], stage="decode",
                    reason="not an image or unsupported format (looks like HTML)")]
    images_schema = schemas.CATALOG.append(pa.field("run_id", pa.string()))
    tables = {
        "images": pa.Table.from_pylist([dict(r, run_id=RUN) for r in catalog],
                                       schema=images_schema),
        "image_matches": pa.Table.from_pylist(image_match_rows(),
                                              schema=schemas.IMAGE_MATCHES),
        "product_matches": pa.Table.from_pylist(products, schema=schemas.PRODUCT_MATCHES),
        "rejects": pa.Table.from_pylist(rejects, schema=schemas.REJECTS),
    }
    path = root / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        for name, table in tables.items():
            con.register("src", table)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM src")
            con.unregister("src")
    return path


class _Collector(HTMLParser):
    """Collects tags with their attributes, and the text of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def attr_values(page: _Collector, name: str) -> list[str]:
    return [a[name] for _, a in page.tags if a.get(name) is not None]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(warehouse, out_dir) of one render shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("report")
    warehouse = make_warehouse(root)
    index = render_report(warehouse, CLIENT, root / "out", per_page=4)
    assert index == root / "out" / "index.html"
    return warehouse, root / "out"


def query(warehouse: Path, sql: str, *params: object) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_every_image_page_lists_the_warehouse_matches_in_rank_order(report):
    warehouse, out = report
    for image_id, *_ in IMAGES:
        expected = query(
            warehouse,
            "SELECT match_image_id, rank, band FROM image_matches "
            "WHERE client_id = ? AND image_id = ? ORDER BY rank", CLIENT, image_id)
        page = parse(out / page_path(IMAGE_DIR, image_id))
        shown: list[list] = []  # [match id, rank, band of the first badge inside its row]
        for tag, a in page.tags:
            if tag == "li" and "data-match-id" in a:
                shown.append([a["data-match-id"], int(a["data-rank"]), None])
            elif shown and shown[-1][2] is None and (a.get("class") or "").startswith("band "):
                shown[-1][2] = a["class"].removeprefix("band band-")
        assert shown == [list(row) for row in expected], image_id
        text = " ".join(page.text)
        assert image_id in text


def test_image_page_shows_band_in_words_components_and_products(report):
    _, out = report
    page = parse(out / page_path(IMAGE_DIR, "4006381333931_PIECE_01"))
    text = " ".join(page.text)
    for words in ("Same image", "Same image, retouched", "Fairly similar",
                  "Average hash", "Difference hash", "Perceptual hash", "Visual features",
                  "Identical file", "yes, same bytes", "1.000", "0.962", "0.840"):
        assert words in text, words
    links = attr_values(page, "href")
    for product in ("4006381333948", "4006381333955", "4006381333931"):
        assert any(h.endswith(page_path(PRODUCT_DIR, product)) for h in links), product
    bars = [a["style"] for t, a in page.tags if t == "dd" and a.get("style")]
    assert "--v:97.0%" in bars  # dah 0.97 of the retouched match, as a bar


def test_feature_component_shows_off_when_fv_was_not_computed(report):
    _, out = report
    text = " ".join(parse(out / page_path(IMAGE_DIR, WEIRD_B)).text)
    assert "Very similar product" in text and "off" in text


def test_ids_are_escaped_and_file_names_are_hashes(report):
    _, out = report
    for image_id in (WEIRD_A, WEIRD_B):
        path = out / page_path(IMAGE_DIR, image_id)
        raw = path.read_text(encoding="utf-8")
        assert "<script>alert" not in raw and "<b>&amp;" not in raw
        assert image_id in " ".join(parse(path).text)  # shown exactly, once unescaped
    names = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    pattern = re.compile(r"^(index\.html|assets/[a-z]+\.(css|js|svg)"
                         r"|list/(images|products)-[a-z_]+-\d{4}\.html|list/(rejects|misfiled)-\d{4}\.html"
                         r"|[ip]/[0-9a-f]{2}/[0-9a-f]{20}\.html|thumbs/[0-9a-f]{2}/[0-9a-f]{20}\.jpg"
                         r"|search/(manifest|[0-9a-f]{16})\.js)$")
    assert [n for n in names if not pattern.match(n)] == []


def test_report_loads_nothing_from_the_network(report):
    _, out = report
    remote = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)|url\(\s*["']?(?:https?:|//)"""
                        r"""|@import|<link[^>]+(?:preconnect|dns-prefetch)""", re.I)
    for path in out.rglob("*"):
        if path.suffix in (".html", ".css", ".js", ".svg"):
            assert not remote.search(path.read_text(encoding="utf-8")), path
    css = (out / "assets/report.css").read_text()
    assert "@font-face" not in css


def test_other_clients_rows_never_show(report):
    _, out = report
    assert not (out / page_path(IMAGE_DIR, "other_only")).exists()
    assert all("other_only" not in p.read_text(encoding="utf-8") for p in out.rglob("*.js"))


def test_thumbnails_are_small_and_unreadable_images_get_the_placeholder(report):
    _, out = report
    thumbs = list((out / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == len([i for i in IMAGES if i[3]])  # not the broken nor the gone one
    for thumb in thumbs:
        with Image.open(thumb) as img:
            assert max(img.size) <= 240
    for image_id in ("5012345678900_broken", "5012345678900_gone"):
        page = parse(out / page_path(IMAGE_DIR, image_id))
        assert any(s.endswith(PLACEHOLDER) for s in attr_values(page, "src")), image_id
    broken = " ".join(parse(out / page_path(IMAGE_DIR, "5012345678900_broken")).text)
    assert "Could not be read" in broken and "looks like HTML" in broken
    gone = " ".join(parse(out / page_path(IMAGE_DIR, "5012345678900_gone")).text)
    assert "No thumbnail: file not found" in gone


def test_index_is_paginated_and_band_filters_hold_only_their_band(report):
    warehouse, out = report
    n_images = len(IMAGES)
    pages = math.ceil(n_images / 4)
    seen: list[str] = []
    for number in range(1, pages + 1):
        page = parse(out / list_href("images", number))
        ids = [a["data-image-id"] for t, a in page.tags if t == "li" and "data-image-id" in a]
        assert 0 < len(ids) <= 4
        seen += ids
    assert not (out / list_href("images", pages + 1)).exists()
    assert seen == sorted(i[0] for i in IMAGES)  # id order, nothing missing or repeated
    best = dict(query(warehouse, "SELECT image_id, arg_max(band, score) FROM image_matches "
                                 "WHERE client_id = ? GROUP BY image_id", CLIENT))
    for band in ("same", "retouched", "very_similar", "similar", "none"):
        expected = {i[0] for i in IMAGES if best.get(i[0], "none") == band}
        got: set[str] = set()
        number = 1
        while (out / list_href("images", number, band)).exists():
            page = parse(out / list_href("images", number, band))
            got |= {a["data-image-id"] for t, a in page.tags if "data-image-id" in a}
            number += 1
        assert got == expected, band


def test_product_pages_list_matching_products(report):
    warehouse, out = report
    products = {i[1] for i in IMAGES}
    for product in products:
        expected = [r[0] for r in query(
            warehouse, "SELECT match_product_id FROM product_matches WHERE client_id = ? "
                       "AND product_id = ? ORDER BY score DESC, match_product_id",
            CLIENT, product)]
        page = parse(out / page_path(PRODUCT_DIR, product))
        shown = [a["data-match-product-id"] for t, a in page.tags
                 if "data-match-product-id" in a]
        assert shown == expected, product
    listing = "".join(p.read_text(encoding="utf-8") for p in (out / "list").glob("products-all-*"))
    assert listing.count("data-product-id=") == len(products)


def test_rejects_page_lists_unreadable_images(report):
    _, out = report
    page = parse(out / list_href("rejects", 1))
    text = " ".join(page.text)
    assert "5012345678900_broken" in text and "decode" in text and "looks like HTML" in text


def test_search_index_finds_every_id_and_reference(report):
    _, out = report
    manifest = (out / "search/manifest.js").read_text()
    body = "".join(p.read_text() for p in (out / "search").glob("*.js"))
    assert manifest.startswith("NPR.manifest(")
    for image_id, product_id, ref, _ in IMAGES:
        for value in (image_id, product_id, ref):
            if value:
                assert search._js(value) in body, value


def _lookup(all_shards: list[search.Shard], query: str) -> set[tuple[str, str]]:
    """What search.js finds for `query`: the same shard choice and prefix filter."""
    q = search.normalise(query)
    hits = set()
    for shard in all_shards:
        p = shard.prefix
        if (p.startswith(q) if shard.exact else (q.startswith(p) or p.startswith(q))):
            hits |= {(e.label, e.kind) for e in shard.entries if e.key.startswith(q)}
    return hits


def test_search_shards_split_by_prefix_and_lose_nothing():
    labels = ["a", "ab", "ab", "abc", "abd", "b", "Éa", "éb", "漢字", "x y", "x\"y", "A<B"]
    labels += [f"ab{n:03d}" for n in range(40)]
    items = sorted((search.Entry(search.normalise(s), s, "image", f"i/{n}", "")
                    for n, s in enumerate(labels)), key=lambda e: (e.key, e.label))
    all_shards = search.shards(items, max_shard=3)
    assert len(all_shards) > 10 and all(len(s.entries) <= 3 for s in all_shards
                                        if len(s.prefix) < search.MAX_DEPTH)
    assert sum(len(s.entries) for s in all_shards) == len(items)
    for query in {s[:k] for s in labels for k in range(1, len(s) + 1)} | {"zz", "AB0"}:
        expected = {(e.label, e.kind) for e in items if e.key.startswith(search.normalise(query))}
        assert _lookup(all_shards, query) == expected, query


def test_rerender_reuses_thumbnails_rewrites_only_changes_and_drops_stale_pages(tmp_path):
    warehouse = make_warehouse(tmp_path, other_client=False)
    out = tmp_path / "out"
    calls: list[tuple[str, int, int]] = []
    render_report(warehouse, CLIENT, out, progress=lambda *a: calls.append(a))
    made = [c for c in calls if c[0] == "thumbnails"]
    assert made[-1][1:] == (9, 9)  # every image but the known reject is read once
    thumbs = {p: p.stat().st_mtime_ns for p in (out / "thumbs").rglob("*.jpg")}
    with duckdb.connect(str(warehouse)) as con:
        con.execute("DELETE FROM images WHERE image_id = 'lonely_01'")
    planted = out / "i" / "zz" / "stale.html"  # a page no render of today would write
    planted.parent.mkdir()
    planted.write_text("old")
    unchanged = out / page_path(IMAGE_DIR, "4006381333931_PIECE_01")
    unchanged_mtime = unchanged.stat().st_mtime_ns
    calls.clear()
    render_report(warehouse, CLIENT, out, progress=lambda *a: calls.append(a))
    assert [c for c in calls if c[0] == "thumbnails"] == [("thumbnails", 1, 1)]  # the gone one
    after = {p: p.stat().st_mtime_ns for p in (out / "thumbs").rglob("*.jpg")}
    assert len(after) == len(thumbs) - 1 and all(thumbs[p] == t for p, t in after.items())
    assert not (out / page_path(IMAGE_DIR, "lonely_01")).exists()
    assert not (out / page_path(PRODUCT_DIR, "lonely")).exists()
    assert not planted.exists()
    assert unchanged.stat().st_mtime_ns == unchanged_mtime  # same content: not rewritten


def test_unknown_client_is_an_error(tmp_path):
    warehouse = make_warehouse(tmp_path)
    with pytest.raises(LookupError, match="no images of client 'nobody'"):
        render_report(warehouse, "nobody", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path / "absent.duckdb", CLIENT, tmp_path / "out")
