"""Tests of the demo catalogue generator (npimage_demo.catalogue): real files, real decoding."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import imagehash
import numpy as np
import pytest
from npimage_demo import catalogue as demo
from PIL import Image

N_PRODUCTS = 30
NAME = re.compile(r"^(?P<gtin>\d{13,14})_PIECE_(?P<piece>\d{2})$")
SAME_KINDS = ("copy", "recompress", "resize", "format")


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _mod10(code: str) -> bool:
    """Independent GS1 check: weighted sum of all digits, 3 on every second from the right."""
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(reversed(code)))
    return total % 10 == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoCatalogue:
    return demo.build_demo_catalogue(tmp_path_factory.mktemp("demo_a"), N_PRODUCTS, seed=0)


@pytest.fixture(scope="module")
def tables(built: demo.DemoCatalogue) -> dict[str, dict[str, str]]:
    """image_id -> manifest row merged with its truth row."""
    _, manifest = _rows(built.manifest)
    _, truth = _rows(built.truth)
    by_id = {r["image_id"]: dict(r) for r in manifest}
    for r in truth:
        by_id[r["image_id"]].update(r)
    return by_id


def _open(built: demo.DemoCatalogue, row: dict[str, str]) -> Image.Image:
    return Image.open(built.manifest.parent / row["uri"]).convert("RGB")


def test_gtin_check_digit_matches_known_codes() -> None:
    assert demo.gtin_check_digit("400638133393") == 1  # 4006381333931
    assert demo.gtin_check_digit("590123412345") == 7  # 5901234123457
    assert demo.gtin_check_digit("0001234560001") == 2  # GTIN-14 00012345600012
    assert demo.is_valid_gtin("4006381333931")
    assert not demo.is_valid_gtin("4006381333932")
    assert not demo.is_valid_gtin("40063813339")


def test_ean13_modules_follow_the_parity_of_the_first_digit() -> None:
    modules = demo.ean13_modules("5901234123457")
    assert len(modules) == 95
    assert (modules[:3], modules[45:50], modules[92:]) == ("101", "01010", "101")
    left = [modules[3 + 7 * i : 10 + 7 * i] for i in range(6)]
    right = [modules[50 + 7 * i : 57 + 7 * i] for i in range(6)]
    # L symbols have an odd count of dark modules, G and R an even one; first digit 5 = LGGLLG.
    assert "".join("L" if s.count("1") % 2 else "G" for s in left) == "LGGLLG"
    assert all(s[0] == "0" and s[-1] == "1" for s in left)
    assert all(s[0] == "1" and s[-1] == "0" and s.count("1") % 2 == 0 for s in right)


def test_itf14_has_two_wide_bars_and_two_wide_spaces_per_digit_pair() -> None:
    widths = demo.itf14_widths("15400141288763")
    assert len(widths) == 4 + 7 * 10 + 3
    for k in range(7):
        pair = widths[4 + 10 * k : 14 + 10 * k]
        assert pair[0::2].count(5) == 2 and pair[1::2].count(5) == 2


def test_default_plan_has_at_least_300_images_of_every_kind() -> None:
    plan = demo.plan_catalogue()
    kinds = Counter(s.kind for s in plan.images)
    assert len(plan.images) >= 300
    assert set(kinds) == set(demo.EXPECTED_BAND) - {"mode"}  # mode: variant families only
    assert sum(kinds[k] for k in demo.PLANTED_KINDS) >= 60
    photos = [p.photo for p in plan.products[:160] if p.photo is not None]
    assert len(photos) >= 5 and len(set(photos)) == len(photos)


def test_same_seed_gives_the_same_bytes(built: demo.DemoCatalogue, tmp_path: Path) -> None:
    again = demo.build_demo_catalogue(tmp_path, N_PRODUCTS, seed=0)
    first, second = built.manifest.parent, again.manifest.parent
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_another_seed_gives_another_catalogue(built: demo.DemoCatalogue, tmp_path: Path) -> None:
    other = demo.build_demo_catalogue(tmp_path, N_PRODUCTS, seed=1)
    assert other.manifest.read_bytes() != built.manifest.read_bytes()


def test_manifest_rows_exist_decode_and_follow_the_nextpage_naming(
    built: demo.DemoCatalogue, tables: dict[str, dict[str, str]]
) -> None:
    header, rows = _rows(built.manifest)
    assert header == ["image_id", "product_id", "uri", "reference", "family", "name"]
    assert {r["family"] for r in rows} <= {"box", "bottle", "blister", "label", "photo"}
    assert all(r["name"].strip() for r in rows)  # a product name for the review app
    assert len(rows) == built.n_images == len(demo.plan_catalogue(N_PRODUCTS, 0).images)
    assert len({r["image_id"] for r in rows}) == len(rows)
    for r in rows:
        path = built.manifest.parent / r["uri"]
        assert not Path(r["uri"]).is_absolute() and path.is_file()
        assert path.stem == r["image_id"] and path.suffix in (".jpg", ".png")
        m = NAME.match(r["image_id"])
        assert m and m["gtin"] == r["reference"]
        assert _mod10(r["reference"]) and demo.is_valid_gtin(r["reference"])
        with Image.open(path) as im:
            assert im.format == ("PNG" if path.suffix == ".png" else "JPEG")
            im.load()
            if tables[r["image_id"]]["kind"] in ("original", "lookalike"):
                assert 300 <= max(im.size) <= 1200
    formats = Counter(Path(r["uri"]).suffix for r in rows)
    assert formats[".jpg"] > formats[".png"] > 0


def test_a_product_has_one_gtin_and_one_or_two_pieces(built: demo.DemoCatalogue) -> None:
    _, rows = _rows(built.manifest)
    pieces: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        pieces[r["product_id"]].append(NAME.match(r["image_id"])["piece"])  # type: ignore[index]
        assert r["reference"] == next(
            x["reference"] for x in rows if x["product_id"] == r["product_id"]
        )
    assert set(map(tuple, map(sorted, pieces.values()))) == {("01",), ("01", "02")}


def test_truth_groups_kinds_and_bands(
    built: demo.DemoCatalogue, tables: dict[str, dict[str, str]]
) -> None:
    header, truth = _rows(built.truth)
    assert header == ["image_id", "group_id", "kind", "expected_band", "edit", "family_id"]
    assert {r["image_id"] for r in truth} == set(tables)
    planted = 0
    for r in truth:
        assert r["expected_band"] == demo.EXPECTED_BAND[r["kind"]]
        source = tables[r["group_id"]]
        assert source["group_id"] == r["group_id"]
        assert source["kind"] in ("original", "lookalike")
        if r["kind"] in demo.PLANTED_KINDS:
            planted += 1
            assert source["product_id"] != tables[r["image_id"]]["product_id"]
        else:
            assert r["group_id"] == r["image_id"]
    assert planted == built.n_planted > 0


def test_exact_copies_have_identical_bytes_and_other_edits_do_not(
    built: demo.DemoCatalogue, tables: dict[str, dict[str, str]]
) -> None:
    root = built.manifest.parent
    seen = Counter()
    for r in tables.values():
        if r["kind"] not in demo.PLANTED_KINDS:
            continue
        mine = (root / r["uri"]).read_bytes()
        original = (root / tables[r["group_id"]]["uri"]).read_bytes()
        assert (mine == original) == (r["kind"] == "copy"), r["image_id"]
        seen[r["kind"]] += 1
    assert seen["copy"] > 0


def test_planted_edits_stay_visually_close_to_their_original(
    built: demo.DemoCatalogue, tables: dict[str, dict[str, str]]
) -> None:
    distances: dict[str, list[int]] = defaultdict(list)
    for r in tables.values():
        if r["kind"] in demo.PLANTED_KINDS:
            d = imagehash.dhash(_open(built, r)) - imagehash.dhash(
                _open(built, tables[r["group_id"]])
            )
            distances[r["kind"]].append(int(d))
            assert d <= (12 if r["kind"] == "retouch" else 6), (r["image_id"], r["kind"], d)
    assert distances["retouch"] and max(distances["copy"] + distances["format"]) <= 2


def test_lookalikes_differ_in_pixels_from_their_family(built: demo.DemoCatalogue) -> None:
    plan = demo.plan_catalogue(N_PRODUCTS, 0)
    families: dict[tuple[int, str], list[demo.ImageSpec]] = defaultdict(list)
    for s in plan.images:
        p = plan.products[s.product_key]
        if s.source is None and p.photo is None:
            families[(p.layout_seed, s.view)].append(s)
    pairs = [(a, b) for f in families.values() for a in f for b in f if a.image_id < b.image_id]
    assert pairs, "seed 0 must plant look-alike families"
    folder = built.manifest.parent / "images"
    for a, b in pairs:
        assert "lookalike" in (a.kind, b.kind)
        ga = np.asarray(Image.open(folder / a.file_name).convert("L"), dtype=np.int16)
        gb = np.asarray(Image.open(folder / b.file_name).convert("L"), dtype=np.int16)
        assert ga.shape == gb.shape  # same template and size: that is what makes them look alike
        assert (np.abs(ga - gb) > 40).mean() > 0.001, (a.image_id, b.image_id)


def test_rebuild_replaces_previous_files_and_keeps_foreign_ones(tmp_path: Path) -> None:
    demo.build_demo_catalogue(tmp_path, 4, seed=0)
    (tmp_path / "images" / "notes.txt").write_text("mine")
    cat = demo.build_demo_catalogue(tmp_path, 4, seed=1)
    _, rows = _rows(cat.manifest)
    files = {p.name for p in (tmp_path / "images").iterdir()}
    assert files == {Path(r["uri"]).name for r in rows} | {"notes.txt"}


def test_cli_prints_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path), "--products", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    _, rows = _rows(tmp_path / "manifest.csv")
    assert f"{len(rows)} images" in out and str(tmp_path / "truth.csv") in out
