"""Verification of close pairs (issue #12): variants of one template leave `same`, edits of
one picture stay, geometric retouches are aligned. Small drawn packs: a second or two."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from npimage_demo import variants
from PIL import Image

from npimage.ingest.decode import decode
from npimage.matching import detail as D
from npimage.matching import verify as V


def _decoded(img: Image.Image, fmt: str = "JPEG", quality: int = 92) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=quality)
    return decode(buf.getvalue(), 10**9).rgb


@pytest.fixture(scope="module")
def family():
    """A base pack on white and its variants (another strength, barcode, name, colour)."""
    rng = np.random.default_rng(3)
    members = variants._family(rng, set(), 4)
    return [(change, variants._on_white(p, 11)) for p, change in members]


def _check(pairs: list[tuple[Image.Image, Image.Image]]) -> V.CheckResult:
    da = [D.detail_signature(_decoded(a)) for a, _ in pairs]
    db = [D.detail_signature(_decoded(b)) for _, b in pairs]
    return V.visual(da, db)


def test_detail_signature_is_small_versioned_and_frames_the_content(family):
    img = family[0][1]
    sig = D.detail_signature(img)
    assert len(sig) == D.DETAIL_BYTES < 20_000 and D.is_current(sig)
    assert not D.is_current(sig[:-1]) and not D.is_current(b"\x00" + sig[1:])
    left, top, right, bottom = D.content_box(img)
    assert 0 < left < right < img.width and 0 <= top < bottom <= img.height  # margins dropped
    framed = Image.new("RGB", (img.width + 200, img.height + 100), (255, 255, 255))
    framed.paste(img, (150, 20))
    res = V.visual([sig], [D.detail_signature(framed)])  # margins do not change the detail
    assert res.cap[0] >= 0.95 and res.floor[0] >= 0.95 and res.reason[0] == V.GEOMETRIC


def test_variants_are_moved_below_retouched(family):
    base = family[0][1]
    res = _check([(base, img) for _, img in family[1:]])
    assert (res.cap < 0.95).all(), list(zip([c for c, _ in family[1:]], res.reason, strict=True))
    assert all(r in (V.TEXT, V.CODE, V.COLOUR, V.SEVERAL) for r in res.reason)


def test_edits_of_one_picture_stay_and_geometric_ones_are_lifted(family):
    base = family[0][1]
    rng = np.random.default_rng(5)
    same = [base.resize((base.width // 2, base.height // 2), Image.Resampling.LANCZOS),
            variants.geometric(base, "tone", rng)[0], variants.geometric(base, "sharpen", rng)[0]]
    geo = [variants.geometric(base, "crop", np.random.default_rng(7))[0],
           variants.geometric(base, "mirror", rng)[0],
           variants.geometric(base, "margin", rng)[0]]
    res = _check([(base, img) for img in same + geo])
    assert (res.cap[:len(same)] == 1).all(), list(res.reason)  # the same image: no cap
    assert (res.floor[len(same):] >= 0.95).all(), list(res.reason)
    assert (res.cap[len(same):] >= 0.95).all(), list(res.cap)
    assert res.cap[len(same) + 1] < 0.99  # mirrored: a retouch, never `same`
    assert res.reason[len(same) + 1] == V.MIRROR


def test_a_rotated_pack_is_lifted(family):
    """A 4 degree turn of a pack with a barcode: aligned, the edges it leaves up to a pixel
    off are forgiven (was capped as "colour differs" before the one-pixel tolerance)."""
    base = family[0][1]
    res = _check([(base, base.rotate(4.0, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)))])
    assert (res.floor >= 0.95).all() and (res.cap >= res.floor).all(), list(res.reason)


@pytest.mark.parametrize("low", [0.87, 0.93])
def test_pairs_only_a_floor_can_change_skip_the_fine_pass_when_far(family, monkeypatch, low):
    """Below `retouched` (in by their FV cosine, or very_similar) a pair can only be moved
    across a band by a floor: reframed copies still are lifted, and another picture is not
    refined by the fine ECC pass (LIFT_SPREAD); it keeps its band."""
    base = family[0][1]
    rng = np.random.default_rng(7)
    geo = [variants.geometric(base, k, rng)[0] for k in ("crop", "mirror", "margin")]
    other = Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8))
    da = [D.detail_signature(_decoded(base))] * 4
    db = [D.detail_signature(_decoded(x)) for x in [*geo, other]]
    fine: list[bool] = []
    ecc = V._ecc
    monkeypatch.setattr(V, "_ecc", lambda a, b, warp=None, small=None: (
        fine.append(warp is not None), ecc(a, b, warp, small))[1])
    scores = np.full(4, low, np.float32)
    verified, reason = V.verify_pairs(scores, da, db)
    assert (verified[:3] >= 0.95).all(), list(reason)
    assert verified[3] == min(low, V.VisualParams().variant_cap) and reason[3] == V.SEVERAL
    assert low < V.LIFT_BELOW
    fine_low = sum(fine)
    fine.clear()
    verified, _ = V.verify_pairs(np.ones(4, np.float32), da, db)  # checked in full
    assert verified[3] == V.VisualParams().variant_cap
    assert sum(fine) == fine_low + 1


def test_checks_combine_lowest_cap_first_reason():
    """A later check (e.g. codes read from the packs) caps a pair the visual check passed."""
    score = np.array([0.999, 0.999, 0.80], np.float32)
    visual = V.CheckResult(np.array([1.0, 0.93, 1.0], np.float32),
                           np.array([0.0, 0.0, 0.955], np.float32),
                           np.array([V.SAME_DETAIL, V.TEXT, V.GEOMETRIC], dtype=object))
    codes = V.CheckResult(np.array([0.90, 1.0, 1.0], np.float32), np.zeros(3, np.float32),
                          np.array(["GTIN differs", "", ""], dtype=object))
    out, reason = V.combine(score, [visual, codes])
    assert out.tolist() == pytest.approx([0.90, 0.93, 0.955])
    assert reason.tolist() == ["GTIN differs", V.TEXT, V.GEOMETRIC]


def test_a_retouch_is_held_in_retouched_and_a_difference_beats_a_lift():
    """A pair aligned clean (crop, mirror, a burst shot a moment apart) is lifted to
    `retouched` but never left in `same`; a check that finds a difference caps it under
    `retouched` even when the visual check would lift it."""
    cap = V.VisualParams().retouch_cap
    score = np.array([0.999, 0.80, 0.97, 0.80], np.float32)
    visual = V.CheckResult(np.full(4, cap, np.float32), np.full(4, 0.955, np.float32),
                           np.full(4, V.GEOMETRIC, dtype=object))
    codes = V.CheckResult(np.array([1.0, 1.0, 1.0, 0.90], np.float32), np.zeros(4, np.float32),
                          np.array(["", "", "", "GTIN differs"], dtype=object))
    out, reason = V.combine(score, [visual, codes])
    assert out.tolist() == pytest.approx([cap, 0.955, 0.97, 0.80])
    assert reason.tolist() == [V.GEOMETRIC] * 3 + ["GTIN differs"]
    assert 0.95 <= cap < 0.99


# -- the GTIN check: codes read from the packs (issue #11) ---------------------------------------

def _codes_of(images: dict[str, Image.Image]):
    """image_id, gtin of the codes the real reader finds on each (JPEG-decoded) picture."""
    import pyarrow as pa

    from npimage.reading.codes import read_codes

    rows = [(i, c.gtin) for i, img in images.items()
            for c in read_codes(np.asarray(_decoded(img).convert("L")))]
    return pa.table({"image_id": [i for i, _ in rows], "gtin": [g for _, g in rows]})


@pytest.fixture(scope="module")
def barcode_pair(family):
    """The base pack, its barcode-only variant (same template and text, another EAN-13)
    and the base recompressed."""
    base = family[0][1]
    variant = next(img for change, img in family if change == "barcode")
    buf = io.BytesIO()
    base.save(buf, "JPEG", quality=60)
    images = {"base": base, "variant": variant, "copy": Image.open(buf).convert("RGB")}
    details = {i: D.detail_signature(_decoded(img)) for i, img in images.items()}
    return images, details


def _pairs(*pairs: tuple[str, str]):
    import pyarrow as pa

    return pa.table({"a": [a for a, _ in pairs], "b": [b for _, b in pairs],
                     "score": pa.array([0.999] * len(pairs), pa.float32())})


def _by_pair(verified) -> dict[tuple[str, str], tuple[float, str]]:
    return {(r["image_id"], r["match_image_id"]): (r["score"], r["verify_reason"])
            for r in verified.to_pylist()}


def test_gtin_differs_moves_a_barcode_variant_below_retouched(barcode_pair):
    images, details = barcode_pair
    codes = _codes_of(images)
    gtins = {i: g for i, g in zip(codes["image_id"].to_pylist(), codes["gtin"].to_pylist(),
                                  strict=True)}
    assert gtins["base"] == gtins["copy"] != gtins["variant"]  # the reader validates digits
    out = _by_pair(V.verify_matches(_pairs(("base", "variant"), ("base", "copy")), details,
                                    codes))
    score, reason = out[("base", "variant")]
    assert score < 0.95 and score == pytest.approx(V.GTIN_CAP)
    assert reason == f"GTIN differs: {gtins['base']} vs {gtins['variant']}"
    assert out[("variant", "base")] == out[("base", "variant")]  # both directions
    assert out[("base", "copy")] == (pytest.approx(0.999), V.SAME_DETAIL)  # same code: same


def test_gtin_check_is_silent_without_codes_on_both_sides(barcode_pair):
    """Reading off (codes None) or one side without a code: only the visual check speaks."""
    images, details = barcode_pair
    pairs = _pairs(("base", "variant"), ("base", "copy"))
    visual_only = _by_pair(V.verify_matches(pairs, details))
    assert _by_pair(V.verify_matches(pairs, details, None)) == visual_only
    assert not any(r.startswith("GTIN") for _, r in visual_only.values())
    codes = _codes_of({"variant": images["variant"]})  # the base read nothing
    assert _by_pair(V.verify_matches(pairs, details, codes)) == visual_only
    res = V.gtin_check(pairs, codes)
    assert (res.cap == 1).all() and (res.reason == "").all()


@pytest.mark.parametrize("read", ["codes", "none"])
def test_pipeline_verify_reads_the_codes_unless_reading_is_off(barcode_pair, tmp_path, read):
    """`npimage run` on three packs: with codes read (the default) the barcode variant is
    "GTIN differs"; with `--read none` the check is skipped and the visual verdict stands."""
    import duckdb

    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.runner import run_pipeline

    images, _ = barcode_pair
    folder = tmp_path / "catalogue"
    (folder / "images").mkdir(parents=True)
    lines = ["image_id,product_id,uri,reference,family,name"]
    for i, (name, img) in enumerate(images.items()):
        img.save(folder / "images" / f"{name}.png")
        lines.append(f"{name},P{i},images/{name}.png,,,{name}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    settings = Settings().with_overrides(data_dir=tmp_path / "data", fv=False, read=read)
    run_pipeline(settings_context("acme", str(folder / "manifest.csv"), "r1", settings),
                 workers=1, report=False)
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    rows = dict(con.execute(
        "SELECT image_id || '-' || match_image_id, verify_reason FROM image_matches "
        "WHERE image_id < match_image_id").fetchall())
    con.close()
    assert "base-variant" in rows and "base-copy" in rows, rows
    assert rows["base-variant"].startswith("GTIN differs: ") == (read == "codes"), rows
    assert not rows["base-copy"].startswith("GTIN"), rows


def test_verify_pairs_gives_the_same_in_threads_and_processes(family):
    """Chunks run on one thread, two threads or two spawned processes: the same answer."""
    base = family[0][1]
    others = [img for _, img in family[1:]] + [base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    da = [D.detail_signature(_decoded(base))] * len(others)
    db = [D.detail_signature(_decoded(x)) for x in others]
    score = np.array([0.97, 0.93, 0.87, 0.87][:len(others)] + [0.97] * (len(others) - 4),
                     np.float32)
    one = V.verify_pairs(score, da, db, chunk=2, threads=1)
    for processes in (False, True):
        got = V.verify_pairs(score, da, db, chunk=2, threads=2, processes=processes)
        assert np.array_equal(got[0], one[0]) and list(got[1]) == list(one[1])


def test_a_small_set_of_pairs_is_split_between_the_threads():
    """~120 pairs (a hashes-only run of 2 000 photos) made one chunk of 128: one thread
    worked, the other core waited. Now each thread gets a chunk; large sets keep CHUNK."""
    assert V.chunk_size(121, 2) == 61
    assert V.chunk_size(121, 1) == 121  # one thread: one chunk
    assert V.chunk_size(10_000, 2) == V.CHUNK
    assert V.chunk_size(20, 2) == V.MIN_CHUNK  # not 10: a chunk's own work outweighs it
    assert V.chunk_size(5, 2, chunk=2) == 2  # the caller's chunk stays the largest
    seen: list[int] = []

    def check(da: object, db: object) -> V.CheckResult:
        n = len(da)  # type: ignore[arg-type]
        seen.append(n)
        return V.CheckResult(np.ones(n, np.float32), np.zeros(n, np.float32),
                             np.full(n, "", dtype=object))

    V.verify_pairs(np.ones(121, np.float32), [b"a"] * 121, [b"b"] * 121, [check], threads=2)
    assert sorted(seen) == ([60, 61] if (os.cpu_count() or 1) >= 2 else [121])  # threads<=cores


def test_verify_pairs_runs_opencv_on_one_thread_and_restores_it():
    """The checks see OpenCV's pool at one thread (its workers' spinning costs CPU between
    calls on small thumbnails); the caller's setting is back afterwards."""
    import cv2

    seen: list[int] = []

    def check(da: object, db: object) -> V.CheckResult:
        seen.append(cv2.getNumThreads())
        n = len(da)  # type: ignore[arg-type]
        return V.CheckResult(np.ones(n, np.float32), np.zeros(n, np.float32),
                             np.full(n, "", dtype=object))

    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        for threads in (1, 2):
            V.verify_pairs(np.ones(4, np.float32), [b"a"] * 4, [b"b"] * 4, [check], chunk=2,
                           threads=threads)
            assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
    assert seen == [1, 1, 1, 1]


# -- `same` means the same image: a re-shot or shifted photo is at most `retouched` ---------------

def _scene(seed: int, size: tuple[int, int] = (440, 340)) -> Image.Image:
    """A photo-like picture without a backdrop: smooth random blobs of colour and grain."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(60):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] \
            * rng.uniform(-120, 120, 3)
    img += 128 + rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_a_shifted_photo_leaves_same_and_its_copies_stay():
    """A burst shot a moment later (the camera moved 1 % of the frame) aligns clean, so the
    residual calls it the same picture; its global shift moves it to `retouched`. A
    recompressed, resized or toned copy of the photo keeps no cap (stays in `same`)."""
    scene = _scene(4)
    shot = scene.crop((10, 10, 410, 310))
    burst = scene.crop((14, 11, 414, 311))  # 4 px of 400: 1 %
    copies = [_decoded(shot, quality=55),
              _decoded(shot.resize((200, 150), Image.Resampling.LANCZOS)),
              _decoded(shot.point(lambda v: min(255, int(v * 1.06))))]
    da = [D.detail_signature(_decoded(shot))] * 4
    db = [D.detail_signature(_decoded(burst))] + [D.detail_signature(c) for c in copies]
    assert V.full_frames(da, db).all()  # photos: no backdrop, the box is the whole frame
    res = V.visual(da, db)
    assert 0.95 <= res.cap[0] < 0.99, (res.cap, res.reason)
    assert res.reason[0] in (V.GEOMETRIC, V.SHIFTED), res.reason
    assert (res.cap[1:] == 1).all(), (res.cap, res.reason)
    shifts = V.global_shift(*[D.unpack_details(d)[0] for d in (da, db)])
    assert 0.8 < shifts[0] < 1.8  # 4 px of 400 is 1.28 px of the 128 px thumbnail
    assert (shifts[1:] < 0.3).all(), shifts


def test_the_grocery_burst_pair_is_not_the_same_image():
    """The one pair of different photos the scores put in `same` on the grocery photos
    (a burst of one shelf, Passion-Fruit_016/_026: 1-2 hash bits, FV cosine 0.993)."""
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    folder = next((p / "grocery-store/dataset/train/Fruit/Passion-Fruit"
                   for p in (here.parent / "shared" / "datasets",
                             here.parents[1] / "shared" / "datasets")
                   if (p / "grocery-store").is_dir()), None)
    if folder is None:
        pytest.skip("../shared/datasets/grocery-store is absent on this machine")
    pics = [decode((folder / f"Passion-Fruit_0{k}.jpg").read_bytes(), 10**9).rgb
            for k in ("16", "26")]
    res = V.visual([D.detail_signature(pics[0])], [D.detail_signature(pics[1])])
    assert res.reason[0] in (V.GEOMETRIC, V.SHIFTED), res.reason
    assert 0.95 <= res.cap[0] < 0.99, res.cap


# -- the region tests, compiled (verify_kernels.region_kind) against their NumPy statement ------

def _ref_median(x: np.ndarray) -> float:
    return float(np.median(x.ravel()))


def _ref_flat_share(x: np.ndarray) -> tuple[float, float]:
    med = _ref_median(x)
    return float((np.abs(x - med) <= V.FLAT).mean()), med


def _ref_edges(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=1)).sum() + np.abs(np.diff(x, axis=0)).sum())


def _ref_is_sticker(pa_: np.ndarray, pb: np.ndarray) -> bool:
    (fa, ma), (fb, mb) = _ref_flat_share(pa_), _ref_flat_share(pb)
    if abs(ma - mb) <= V.LEVEL_CHANGE:
        return False
    x, y, fx, fy = (pa_, pb, fa, fb) if fa >= fb else (pb, pa_, fb, fa)
    if fx < V.STICKER_FLAT:
        return False
    return fy < V.STICKER_FLAT or _ref_edges(x) > 2.0 * max(_ref_edges(y), 1e-3)


def _ref_pasted(a: np.ndarray, b: np.ndarray, sl: tuple[slice, slice]) -> bool:
    ea, eb = _ref_edges(a[sl]), _ref_edges(b[sl])
    if max(ea, eb) < V.STICKER_EDGES * max(min(ea, eb), 1e-3):
        return False
    x, y = (a, b) if ea >= eb else (b, a)
    h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    if (max(ea, eb) >= 2 * V.STICKER_EDGES * max(min(ea, eb), 1e-3) and w >= 1.2 * h
            and _ref_flat_share(y[sl])[0] < V.STICKER_FLAT + 0.1):
        return True
    (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
    ring = np.zeros(a.shape, bool)
    ring[max(0, y0 - V.RING):y1 + V.RING, max(0, x0 - V.RING):x1 + V.RING] = True
    ring[sl] = False
    if not ring.any():
        return False
    sx, sy = (abs(_ref_median(img[sl]) - _ref_median(img[ring])) for img in (x, y))
    return sx >= V.STANDS_OUT and sx - sy >= V.STANDS_OUT / 2


def _ref_colour_patch(ca: np.ndarray, cb: np.ndarray) -> bool:
    sat = [float(np.hypot(*(np.median(c.reshape(-1, 2), axis=0) - 128.0))) for c in (ca, cb)]
    return max(sat) >= V.STICKER_SATURATION and min(sat) <= V.NEUTRAL


def _ref_kinds(a, b, ca, cb, stats, small_area: float) -> tuple[str, bool]:
    """The region tests as NumPy statements (verify's code before they were compiled)."""
    kinds = []
    for x0, y0, w, h, _ in stats:
        sl = (slice(y0, y0 + h + V.WINDOW - 1), slice(x0, x0 + w + V.WINDOW - 1))
        f = D.CHROMA_SIDE / D.DETAIL_SIDE
        cs = (slice(int(y0 * f), int(np.ceil((y0 + h + V.WINDOW) * f))),
              slice(int(x0 * f), int(np.ceil((x0 + w + V.WINDOW) * f))))
        if w * h <= small_area and (_ref_is_sticker(a[sl], b[sl]) or _ref_pasted(a, b, sl)
                                    or _ref_colour_patch(ca[cs], cb[cs])):
            kinds.append(V.STICKER)
            continue
        pa_, pb = a[sl], b[sl]
        gx = np.abs(np.diff(pa_, axis=1)).sum() + np.abs(np.diff(pb, axis=1)).sum()
        gy = np.abs(np.diff(pa_, axis=0)).sum() + np.abs(np.diff(pb, axis=0)).sum()
        kinds.append(V.CODE if gx > 3 * gy else V.TEXT)
    rest = [k for k in kinds if k != V.STICKER]
    if not rest and len(kinds) <= 2:
        return V.STICKER, True
    if len(rest) > 2 or not rest:
        return V.SEVERAL, False
    return rest[0], False


def _kernel_kinds(a, b, ca, cb, stats, small_area: float) -> tuple[str, bool]:
    from npimage.matching import verify_kernels as K

    kind = K.region_kind(a, b, ca, cb, stats, small_area, V.WINDOW,
                         D.CHROMA_SIDE / D.DETAIL_SIDE, V.FLAT, V.STICKER_FLAT,
                         V.LEVEL_CHANGE, V.STICKER_EDGES, V.STANDS_OUT, V.RING,
                         V.STICKER_SATURATION, V.NEUTRAL)
    return V._KINDS[kind], kind == K.KIND_STICKER


def test_compiled_sums_and_medians_are_numpy_s_bit_for_bit():
    """Edge sums in NumPy's pairwise order, medians and flat shares: the same floats."""
    from npimage.matching import verify_kernels as K

    rng = np.random.default_rng(11)
    for n in [*range(0, 300), 1000, 4097, 16384]:
        v = np.abs(rng.standard_normal(n)).astype(np.float32)
        assert K._psum(v, 0, n) == v.sum()
    x = np.clip(rng.standard_normal((128, 128)), -3, 3).astype(np.float32)
    x[40:60, 10:50] = 1.25  # flat runs: ties in medians and flat shares
    buf = np.empty(x.size, np.float32)
    for _ in range(400):
        y0, x0 = (int(v) for v in rng.integers(0, 127, 2))
        y1, x1 = (min(128, int(v)) for v in (y0 + rng.integers(1, 70), x0 + rng.integers(1, 70)))
        p = x[y0:y1, x0:x1]
        gx, gy = K._edge_sums(x, y0, y1, x0, x1, buf)
        assert gx == np.abs(np.diff(p, axis=1)).sum() and gy == np.abs(np.diff(p, axis=0)).sum()
        assert K._flat(x, y0, y1, x0, x1, V.FLAT, buf) == _ref_flat_share(p)


def _patches(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A pair of normalised thumbnails and chroma with labels, flat fills, colour patches
    and changed print in random places, and random changed areas over them."""
    a = np.clip(rng.standard_normal((128, 128)), -3, 3).astype(np.float32)
    a = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1)) / np.float32(3.0)  # some spatial texture
    b = a.copy()
    ca = np.full((32, 32, 2), 128, np.uint8) + rng.integers(0, 6, (32, 32, 2), dtype=np.uint8)
    cb = ca.copy()
    boxes = []
    for _ in range(int(rng.integers(1, 6))):
        y, x = (int(v) for v in rng.integers(0, 120, 2))
        h, w = (int(v) for v in rng.integers(3, 30, 2))
        boxes.append((x, y, min(w, 126 - x), min(h, 126 - y), 0))
        what = rng.integers(0, 5)
        if what == 0:  # a flat label of another level
            b[y:y + h, x:x + w] = np.float32(rng.choice([-1.5, 0.0, 1.0, 2.0]))
        elif what == 1:  # a label with print and outline
            b[y:y + h, x:x + w] = np.float32(2.0)
            b[y + 1:y + h - 1:2, x + 1:x + w - 1] = np.float32(-1.0)
        elif what == 2:  # a saturated colour over neutral
            cb[y // 4:(y + h) // 4 + 1, x // 4:(x + w) // 4 + 1] = (60, 200)
        elif what == 3:  # another barcode: vertical bars
            b[y:y + h, x:x + w:2] = np.float32(2.5)
        else:  # changed print
            b[y:y + h, x:x + w] = rng.standard_normal((min(h, 128 - y), min(w, 128 - x)))
    if rng.random() < 0.5:  # the changed areas where the changes are
        stats = np.array(boxes, np.int32)
    else:  # anywhere
        n = int(rng.integers(0, 6))
        stats = np.zeros((n, 5), np.int32)
        for k in range(n):
            y0, x0 = (int(v) for v in rng.integers(0, 126, 2))
            stats[k, :4] = (x0, y0, rng.integers(1, 127 - x0), rng.integers(1, 127 - y0))
    if rng.random() < 0.1:  # an area covering everything: no ring around it
        stats = np.array([[0, 0, 127, 127, 0]], np.int32)
    return a, b, ca, cb, stats


def test_compiled_region_tests_say_what_their_numpy_statement_says(family):
    """verify_kernels.region_kind (early exit at the third area that is not a sticker) gives
    the reason and sticker flag of the NumPy statement of the region tests: on random
    labels, fills, colour patches and print over random areas, at several sticker sizes,
    and through verify's own path on the drawn variants and a label stuck on the pack."""
    rng = np.random.default_rng(17)
    seen = set()
    for _ in range(600):
        a, b, ca, cb, stats = _patches(rng)
        for share in (0.02, 0.08, 0.5):
            got = _kernel_kinds(a, b, ca, cb, stats, share * a.size)
            assert got == _ref_kinds(a, b, ca, cb, stats, share * a.size)
            seen.add(got)
    assert len(seen) == 4  # sticker, text, barcode, several
    base = family[0][1]
    label = base.copy()
    label.paste((250, 220, 40), (base.width // 3, base.height // 3,
                                 base.width // 3 + 40, base.height // 3 + 25))
    others = [img for _, img in family[1:]] + [label]
    ga, ca = D.unpack_details([D.detail_signature(_decoded(base))] * len(others))
    gb, cb = D.unpack_details([D.detail_signature(_decoded(x)) for x in others])
    params = V.VisualParams()
    r = V.compare_details(ga, ca, gb, cb, params)
    import cv2

    for i in range(len(others)):
        bad = (r.grey_map[i] > params.grey_clean).astype(np.uint8)
        if not bad.any() or bad.mean() > V.ONE_REGION:
            continue
        stats = cv2.connectedComponentsWithStats(cv2.dilate(bad, np.ones((5, 5), np.uint8)),
                                                 connectivity=8)[2][1:]
        want = _ref_kinds(r.a[i], r.b[i], r.ca[i], r.cb[i], stats,
                          params.sticker_area * r.a[i].size)
        assert V._region_kind(r, i, params) == want


def test_compiled_glue_gives_numpy_s_floats():
    """The renormalisation over an overlap, the mirror test's means, the overlap at chroma
    size and the one-pixel-tolerant grey residual: the floats of their NumPy statements."""
    from npimage.matching import verify_kernels as K

    rng = np.random.default_rng(23)
    n = 12
    x = np.clip(rng.standard_normal((n, 128, 128)), -3, 3).astype(np.float32)
    y = (x + np.float32(0.4) * rng.standard_normal((n, 128, 128))).astype(np.float32)
    y[::3] = x[::3, :, ::-1]  # mirrored copies
    valid = (rng.random((n, 128, 128)) > 0.1).astype(np.float32)
    valid[0], valid[1, :, :50] = 1.0, 0.0
    valid[2] = 0.0  # no overlap at all
    m = (x * valid).sum(axis=(1, 2), keepdims=True) / (valid.sum(axis=(1, 2), keepdims=True)
                                                        + 1e-6)
    sd = np.sqrt((((x - m) * valid) ** 2).sum(axis=(1, 2), keepdims=True)
                 / (valid.sum(axis=(1, 2), keepdims=True) + 1e-6)) + 1e-3
    assert np.array_equal(V._renorm(x, valid), ((x - m) / sd).astype(np.float32))
    flipped, straight = K.mean_abs_diffs(x, y)
    assert np.array_equal(flipped, np.abs(x - y[:, :, ::-1]).mean(axis=(1, 2)))
    assert np.array_equal(straight, np.abs(x - y).mean(axis=(1, 2)))
    assert V._mirrored(x, y)[::3].all()
    k = D.DETAIL_SIDE // D.CHROMA_SIDE
    assert np.array_equal(V._inside(valid),
                          valid.reshape(n, D.CHROMA_SIDE, k, D.CHROMA_SIDE, k).min(axis=(2, 4)))
    ba, bb = V._blurs(x), V._blurs(y)
    rows = np.arange(n, dtype=np.int64)
    pick, peak, gmap, tpeak, tmap = K.grey_maps(ba, bb, rows, rows, valid, True, True)
    for i in range(n):  # the picked blurs' plain and tolerant windowed maps, in NumPy
        xa, xb = ba[K.COMBOS[pick[i], 0], i][None], bb[K.COMBOS[pick[i], 1], i][None]
        plain = V._box(V._diff(xa, xb, False, lambda u, v: np.abs(u - v)) * valid[i], V.WINDOW)
        tol = V._box(V._diff(xa, xb, True, lambda u, v: np.abs(u - v)) * valid[i], V.WINDOW)
        assert np.array_equal(gmap[i], plain[0]) and peak[i] == plain.max()
        assert tpeak[i] == tol.max() and np.array_equal(tmap[i], tol[0])
