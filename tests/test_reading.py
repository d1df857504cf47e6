"""Pack reading (npimage.reading): quantities, GTINs and GS1 strings, codes, OCR, the run's
reading stages, the warehouse and backend tables and the catalogue GTIN check."""

from __future__ import annotations

import csv
import io
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pg import pg_connect
from PIL import Image, ImageDraw, ImageFont

from npimage.config import Settings
from npimage.pipeline import settings_context
from npimage.reading import PackReading, compare_packs, parse_quantities, parse_quantity
from npimage.reading.codes import interpret, read_codes
from npimage.reading.gtin import (
    GS,
    check_digit,
    gtin_of_digital_link,
    gtin_of_gs1,
    parse_gs1,
    to_gtin14,
)
from npimage.reading.stage import parse_read
from npimage.runner import run_pipeline

# -- quantities --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Paracetamol 500 mg", ["500 mg"]),
    ("500mg", ["500 mg"]),
    ("500 MG", ["500 mg"]),
    ("250 ml", ["250 ml"]),
    ("250 mL", ["250 ml"]),
    ("0.9 %", ["0.9 %"]),
    ("NaCl 0,9 %", ["0.9 %"]),
    ("0,9%", ["0.9 %"]),
    ("2000 IU", ["2000 IU"]),
    ("2000 UI", ["2000 IU"]),
    ("1000 I.U.", ["1000 IU"]),
    ("10 x 20 cm", ["10 x 20 cm"]),
    ("10x20cm", ["10 x 20 cm"]),
    ("10 × 10 cm", ["10 x 10 cm"]),
    ("5 mcg", ["5 µg"]),
    ("5 µg", ["5 µg"]),
    ("5 μg", ["5 µg"]),  # Greek mu
    ("5 ug", ["5 µg"]),
    ("1 g", ["1 g"]),
    ("2,5 kg", ["2.5 kg"]),
    ("1 L", ["1 l"]),
    ("1 litre", ["1 l"]),
    ("100 IU/ml", ["100 IU/ml"]),
    ("250 mg/5 ml", ["250 mg/5 ml"]),
    ("21G x 40 mm", ["21 G", "40 mm"]),
    ("21Gx 40 mm", ["21 G", "40 mm"]),
    ("Amoxicillin 500 mg, 20 tablets", ["500 mg"]),
    ("Glucose 5 % 500 ml", ["5 %", "500 ml"]),
    ("Store below 25 C", []),
    ("EXP 03/2027 LOT 45A123", []),
    ("size M", []),
    ("3-0", []),
    ("Vitamin D3", []),
    ("Amoxicillin400mg", ["400 mg"]),  # OCR dropped the space
    ("Metformin1g", ["1 g"]),
    ("REF 5mgX", []),  # a unit glued to a word is not a unit
])
def test_parse_quantities(text, expected):
    assert [str(q) for q in parse_quantities(text)] == expected


def test_ocr_fixes_before_parsing():
    from npimage.reading.text import ocr_fixes

    assert [str(q) for q in parse_quantities(ocr_fixes("1001U/ml"))] == ["100 IU/ml"]
    assert ocr_fixes("100 IU/ml 5 mg") == "100 IU/ml 5 mg"


def test_quantity_values_and_same_amount():
    q = parse_quantity("0,9 %")
    assert (q.value, q.unit) == (0.9, "%")
    d = parse_quantity("10 x 20 cm")
    assert (d.value, d.value2, d.unit) == (10, 20, "cm")
    assert parse_quantity("1 g").base == parse_quantity("1000 mg").base
    assert parse_quantity("500 µg").base == parse_quantity("0.5 mg").base
    assert parse_quantity("5 mg").base != parse_quantity("5 ml").base
    assert parse_quantity("no amount") is None


# -- GTINs and GS1 ---------------------------------------------------------------------


def test_gtin_check_digits_and_gtin14():
    assert check_digit("400638133393") == 1
    assert to_gtin14("4006381333931") == "04006381333931"
    assert to_gtin14("036000291452") == "00036000291452"  # UPC-A
    assert to_gtin14("96385074") == "00000096385074"  # EAN-8
    assert to_gtin14("07323190073177") == "07323190073177"
    assert to_gtin14("4006381333932") is None  # wrong check digit
    assert to_gtin14("40063813339") is None  # 11 digits
    assert to_gtin14("4OO6381333931") is None


def test_gs1_element_strings():
    poc = "0107323190073177172205281019F011"  # the POC's GS1-128 example
    assert parse_gs1(poc) == [("01", "07323190073177"), ("17", "220528"), ("10", "19F011")]
    assert gtin_of_gs1(poc) == "07323190073177"
    raw = f"]C110ABC{GS}0107323190073177{GS}21XYZ9"
    assert parse_gs1(raw) == [("10", "ABC"), ("01", "07323190073177"), ("21", "XYZ9")]
    assert parse_gs1("0107323190073177310200150011220101") == [
        ("01", "07323190073177"), ("3102", "001500"), ("11", "220101")]
    hri = "(01)07323190073177(17)220528(10)19F011"
    assert gtin_of_gs1(hri) == "07323190073177"
    assert gtin_of_gs1("0107323190073178") is None  # AI 01 with a wrong check digit
    assert gtin_of_gs1("01073231900731") is None  # cut short
    assert gtin_of_gs1("10ABC") is None  # no AI 01
    assert gtin_of_digital_link("https://id.gs1.org/01/07323190073177/10/ABC") == \
        "07323190073177"
    assert gtin_of_digital_link("https://example.com/product/123") is None


def test_interpret_never_gives_a_wrong_gtin():
    assert interpret("EAN-13", "4006381333931", False)[1] == "04006381333931"
    assert interpret("EAN-13", "4006381333932", False)[1:] == (None, "check digit fails")
    assert interpret("ITF", "123456", False)[1] is None
    assert interpret("ITF", "07323190073177", False)[:2] == ("ITF-14", "07323190073177")
    assert interpret("Code 128", "0107323190073177", True)[:2] == ("GS1-128", "07323190073177")
    assert interpret("Code 128", "HELLO", False)[1] is None
    assert interpret("QR", "https://id.gs1.org/01/07323190073177", False)[1] == \
        "07323190073177"


# -- codes and text on pictures --------------------------------------------------------


def test_rendered_codes_read_exactly():
    from npimage_demo.codeset import cases

    found = []
    for case in cases(seed=3, modules=(2, 3), rotations=(0, 90), qualities=(75,)):
        gray = np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L"))
        codes = [c for c in read_codes(gray) if c.gtin]
        assert [c.gtin for c in codes] == [case.gtin], case.label
        if case.hri:
            assert codes[0].text == case.hri and codes[0].gs1, case.label
        found.append(codes[0].symbology)
    assert set(found) == {"EAN-13", "GS1-128", "DataMatrix"}


def test_thin_barred_codes_read_by_the_crop_pass():
    """1 pixel per bar, tilted: only the crop pass (bar_regions, upscaled crops) reads them."""
    from npimage_demo.codeset import cases

    from npimage.reading.codes import bar_regions

    for case in cases(seed=3, symbologies=("EAN-13",), modules=(1,), rotations=(7, 25),
                      qualities=(75,)):
        gray = np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L"))
        assert bar_regions(gray), case.label
        assert [c.gtin for c in read_codes(gray) if c.gtin] == [case.gtin], case.label


def _skimage_grey(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(getattr(data, name)()).convert("L"))


def test_screen_tells_thin_codes_from_photos_and_print():
    """bar_like: thin-barred codes at any tilt pass; photos, textures and text do not."""
    from npimage_demo.codeset import cases

    from npimage.reading.codes import bar_like

    for case in cases(seed=3, symbologies=("EAN-13", "GS1-128"), modules=(1, 2),
                      rotations=(0, 7, 25, 90), qualities=(75,)):
        gray = np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L"))
        assert bar_like(np.pad(gray, 120, constant_values=255)), case.label
    for name in ("astronaut", "coffee", "camera", "brick", "gravel", "text", "page"):
        assert not bar_like(_skimage_grey(name)), name


def test_costly_passes_only_where_the_screen_sees_bars(monkeypatch):
    """A photo without code gets the first pass only; a 1-pixel-barred code on a picture
    too large to skip the screen is still read by the upscaled passes."""
    from npimage_demo.codeset import cases

    from npimage.reading import codes as C

    calls = []
    upscaled = C._upscaled
    monkeypatch.setattr(C, "_upscaled", lambda *a: calls.append(a[1:]) or upscaled(*a))
    photo = _skimage_grey("coffee")
    assert photo.size > C.SCREEN_BELOW and read_codes(photo) == [] and calls == []
    case = next(iter(cases(seed=3, symbologies=("EAN-13",), modules=(1,), rotations=(0,),
                           qualities=(75,))))
    gray = np.pad(np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L")), 120,
                  constant_values=255)
    assert gray.size > C.SCREEN_BELOW
    read = [c for c in read_codes(gray) if c.gtin]
    assert [c.gtin for c in read] == [case.gtin]
    assert calls, "the upscaled passes were skipped"
    x0, y0, x1, y1 = read[0].box  # in the padded picture's pixels, not the region's
    assert 110 <= x0 < x1 <= gray.shape[1] - 110 and 110 <= y0 <= y1 <= gray.shape[0] - 110
    assert "screen1" in C.reader_version()


def test_grey_of_the_stage_is_rounded_luma():
    """The stage's grey (OpenCV) is PIL's convert('L') to within one level."""
    from npimage.reading.stage import grey

    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    got = grey(rgb)
    want = np.asarray(Image.fromarray(rgb).convert("L"))
    assert got.shape == want.shape and got.dtype == np.uint8
    assert int(np.abs(got.astype(int) - want).max()) <= 1


def test_vote_drops_a_gtin_that_other_reads_contradict():
    """3 reads of a misread against 2 of the printed code at the same place: no GTIN."""
    from npimage.reading.codes import Code, _vote

    def ean(text: str, y: int) -> Code:
        return Code("EAN-13", text, "0" + text, (20, y, 120, y + 1), False)

    right, wrong = "3015196236369", "6015186236369"
    runs = [[ean(wrong, 166)], [ean(right, 163)], [ean(wrong, 170)], [ean(right, 180)],
            [ean(wrong, 175)], []]
    assert [c.gtin for c in _vote(runs)] == [None, None]
    far = [[ean(right, 10)], [ean(right, 12)], [ean("4006381333931", 400)]]
    assert {c.text: c.gtin for c in _vote(far)}[right] == "0" + right


def test_ocr_reads_a_printed_strength():
    from npimage.reading.text import read_text

    img = Image.new("RGB", (520, 140), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((20, 20), "Ibuprofen", font=ImageFont.load_default(size=44), fill=(0, 0, 0))
    draw.text((20, 75), "400 mg", font=ImageFont.load_default(size=44), fill=(0, 0, 0))
    lines = read_text(np.asarray(img))
    amounts = [str(q) for ln in lines for q in ln.quantities]
    assert amounts == ["400 mg"]
    assert "ibuprofen" in {t for ln in lines for t in ln.tokens}
    assert all(0.5 <= ln.confidence <= 1 and ln.box[2] > ln.box[0] for ln in lines)


def test_compare_packs_reasons():
    five = PackReading(frozenset({"04006381333931"}), tuple(parse_quantities("5 mg")))
    ten = PackReading(frozenset({"05901234123457"}), tuple(parse_quantities("10 mg")))
    assert compare_packs(five, ten) == ["GTIN differs: 04006381333931 vs 05901234123457",
                                        "strength differs: 5 mg vs 10 mg"]
    gram = PackReading(frozenset(), tuple(parse_quantities("1 g 20 ml")))
    milli = PackReading(frozenset(), tuple(parse_quantities("1000 mg")))
    assert compare_packs(gram, milli) == []  # same amount; volume read on one side only
    assert compare_packs(PackReading(), ten) == []  # nothing read: no evidence


def test_parse_read_switch():
    assert parse_read("codes,text") == ("codes", "text")
    assert parse_read("none") == () and parse_read("") == ()
    with pytest.raises(ValueError, match="unknown reader"):
        parse_read("codes,barcodes")


# -- the run: reading stages, warehouse, catalogue check, reuse, backend ---------------


def _ctx(data, source, run_id, mode="full", read="codes"):
    settings = Settings().with_overrides(data_dir=data, fv=False, read=read)
    return settings_context("acme", str(source), run_id, settings, mode=mode)


def _truth(small_demo) -> dict[str, dict]:
    with (small_demo.manifest.parent / "reading_truth.csv").open() as fh:
        return {r["image_id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def read_run(small_demo, tmp_path_factory):
    data = tmp_path_factory.mktemp("reading")
    info = run_pipeline(_ctx(data, small_demo.manifest, "r1"), workers=1, report=False)
    return data, info


def test_codes_of_the_demo_and_the_catalogue_check(read_run, small_demo):
    data, info = read_run
    truth = _truth(small_demo)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    read = dict(con.sql("SELECT image_id, list(gtin) FROM image_codes WHERE gtin IS NOT NULL "
                        "GROUP BY image_id").fetchall())
    printed = {i for i, r in truth.items() if r["printed_gtin"]}
    assert set(read) == printed  # every printed code read, nothing read elsewhere
    assert all(read[i] == [truth[i]["printed_gtin"]] for i in read)  # and read right
    listed = {r[0]: r[1:] for r in con.sql(
        "SELECT image_id, reference_gtin, image_gtins FROM catalogue_gtin_mismatch").fetchall()}
    expected = {i for i, r in truth.items() if r["gtin_mismatch"] == "1"}
    assert set(listed) == expected and expected
    some = sorted(expected)[0]
    assert listed[some] == (truth[some]["reference_gtin"], [truth[some]["printed_gtin"]])
    assert info["reading"]["image_codes"] == len(read)


def test_incremental_run_reuses_reads_and_none_reads_nothing(read_run, small_demo):
    data, _ = read_run
    run_pipeline(_ctx(data, small_demo.manifest, "r2", "incremental"), workers=1, report=False)
    run_dir = data / "clients" / "acme" / "runs"
    assert not list((run_dir / "r2" / "reading" / "reads").glob("*.parquet"))  # nothing read
    before = pq.read_table(run_dir / "r1" / "image_codes.parquet").drop(["sha256"])
    after = pq.read_table(run_dir / "r2" / "image_codes.parquet").drop(["sha256"])
    assert after.equals(before)


def test_backend_gets_codes_and_flags_catalogue_errors(read_run, small_demo, pg_backend):
    from npimage import backend
    from npimage.ingest.extract import extract_catalog

    data, _ = read_run
    res = extract_catalog("acme", small_demo.manifest, data / "cat.parquet", data / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    run_dir = data / "clients" / "acme" / "runs" / "r1"
    out = backend.load_matches(pg_backend, "acme", "r1", run_dir / "image_matches.parquet",
                               run_dir / "product_matches.parquet",
                               reading={"image_codes": run_dir / "image_codes.parquet",
                                        "image_text": run_dir / "image_text.parquet"})
    assert out["n_image_codes"] == pq.read_metadata(run_dir / "image_codes.parquet").num_rows
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("SELECT image_id FROM npimage_catalogue_gtin_mismatch WHERE client_id = 'acme'")
        flagged = {r[0] for r in cur.fetchall()}
    expected = {i for i, r in _truth(small_demo).items() if r["gtin_mismatch"] == "1"}
    assert flagged == expected


def test_report_image_page_shows_codes_and_catalogue_errors(read_run, small_demo, tmp_path):
    from npimage.report import render_report
    from npimage.report.data import page_path

    data, _ = read_run
    render_report(data / "warehouse.duckdb", "acme", tmp_path / "report")
    truth = _truth(small_demo)
    wrong = sorted(i for i, r in truth.items() if r["gtin_mismatch"] == "1")[0]
    right = sorted(i for i, r in truth.items() if r["printed_gtin"] and
                   r["gtin_mismatch"] == "0")[0]
    page = (tmp_path / "report" / page_path("i", wrong)).read_text()
    assert 'class="code-box"' in page and "Catalogue error" in page
    assert truth[wrong]["printed_gtin"] in page and truth[wrong]["reference_gtin"] in page
    page = (tmp_path / "report" / page_path("i", right)).read_text()
    assert 'class="code-box"' in page and "Catalogue error" not in page


def _undated(path: Path) -> pa.Table:
    """A reading file's rows without their `computed_at` (a read again has another)."""
    table = pq.read_table(path)
    return table.drop([c for c in ("computed_at",) if c in table.column_names])


def test_codes_read_by_the_signature_stage_match_the_read_codes_stage(read_run, small_demo):
    """The signature stage reads the codes from its own decode and read_codes takes them
    over (a marker per batch); read again by read_codes itself, the files are the same."""
    from npimage import pipeline

    data, _ = read_run
    ctx = _ctx(data, small_demo.manifest, "r1")
    batches = sorted(str(p) for p in (ctx.run_dir / "plan").glob("batch-*.parquet"))
    reading = ctx.run_dir / "reading"
    assert batches and all((reading / "done" / f"codes-{Path(b).stem}.json").exists()
                           for b in batches)
    name = Path(batches[0]).name
    files = (reading / "codes" / name, reading / "reads" / f"codes-{name}")
    shared = [_undated(f) for f in files]
    taken = pipeline.read_codes(ctx, batches[0])
    (reading / "done" / f"codes-{Path(name).stem}.json").unlink()  # read_codes reads itself
    again = pipeline.read_codes(ctx, batches[0])
    assert taken == again and taken["read"] > 0
    for f, before in zip(files, shared, strict=True):
        assert _undated(f).equals(before)


def test_a_resumed_signature_batch_reads_its_lost_codes_again(read_run, small_demo):
    """A signature task that takes its batch over from disk (a retry after the codes were
    lost) reads the batch's codes itself: no separate task is left to do it."""
    from npimage import pipeline

    data, _ = read_run
    ctx = _ctx(data, small_demo.manifest, "r1")
    batch = sorted(str(p) for p in (ctx.run_dir / "plan").glob("batch-*.parquet"))[-1]
    name = Path(batch).name
    reading = ctx.run_dir / "reading"
    files = (reading / "codes" / name, reading / "reads" / f"codes-{name}")
    before = [_undated(f) for f in files]
    for f in files:
        f.unlink()
    (reading / "done" / f"codes-{Path(name).stem}.json").unlink(missing_ok=True)  # if any
    sig = ctx.run_dir / "sig_batches" / name
    written = sig.stat().st_mtime_ns
    pipeline.signatures(ctx, batch)
    assert sig.stat().st_mtime_ns == written  # taken over, not computed again
    assert all(f.is_file() for f in files)
    for f, old in zip(files, before, strict=True):
        assert _undated(f).equals(old)
