"""Match quality on real photos: build the evaluation set, run the pipeline, fit, evaluate.

Data (nothing downloaded; anyone can rebuild it): ../shared/datasets/grocery-store
(smartphone photos of 81 grocery products, 31 of them look-alike cartons under
Packages, plus one "iconic" catalogue picture per product) and pdq-edits (one photo
with 11 real edits and 14 pixel-mode/format variants), and edits generated here from
them with a fixed seed. Results and method: docs/QUALITY.md.

Steps:

1. build (when `<work>/eval/truth.csv` is absent, or --rebuild): `<work>/eval/` gets
   `manifest.csv` (image_id,product_id,uri,reference; the real photos are referenced
   where they are, the generated edits are written to `images/`) and `truth.csv`
   (image_id,group_id,kind,expected_band,product,query,collection: group = the source
   photo, expected_band = the band the pair (source, image) must reach, product = the
   real product shown, query = a Packages photo whose top-1 product is measured).
   Sources of generated edits: every iconic picture, the pdq original, and a seeded
   sample of grocery photos (half of them Packages). Each source gets one edit of the
   kinds that must stay in band `same` (copy, recompress, resize, format) and one
   retouch (tone, sticker, crop <= 5 %, rotation <= 3 degrees, sharpen:
   npimage_demo.catalogue's edits), kinds in balanced turns.
2. run (when `<work>/data` has no warehouse, or --rebuild): the real pipeline
   (npimage.runner.run_pipeline, FV on) into `<work>/data`, client `quality`.
3. fit: npimage.quality.fitting on the run's signatures and truth.csv -> `<work>/weights.json`
   (and plugins/npimage/weights/default.json with --write-default).
4. tables (Markdown, for docs/QUALITY.md): the issue's targets for our weights with and
   without FV, FV alone and the previous defaults, computed from the signatures over
   every labelled pair and every candidate; per kind; 2-fold cross-validation by photo.
5. the pipeline's view: a run with the fitted weights, labelled pairs found in band
   (npimage.quality.evaluate.planted_found); the demo catalogue, FV on and off.

    .venv/bin/python bench/quality.py [--work bench/out/quality] [--seed 0] [--sources 800]
                                      [--rebuild] [--write-default] [--no-cv] [--no-demo]

Before -> after a refit, and the held-out range (docs/QUALITY.md, "Refit on the version-2
hashes"): `--measure FILE` (repeatable) replaces steps 3-5 by the exact tables of the given
weights files, FV on and off (`--pipeline`: plus a run with each, verification included);
`--heldout N` builds and runs, in bench/out/quality-heldout, stronger edits (HELDOUT_KINDS)
of N grocery photos that are not sources of the fit set, to measure weights on a range the
fit never saw.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
CLIENT = "quality"

#: Generated edits that must land in band `same`, and the retouches that must reach
#: `retouched` (npimage_demo.catalogue's definitions, so the demo and this set agree).
SAME_KINDS = ("copy", "recompress", "resize", "format")
RETOUCH_KINDS = ("tone", "sticker", "crop", "rotate", "sharpen")

#: pdq-edits files: (kind, expected band) of the pair (bridge-mods/aaa-orig.jpg, file).
#: The dataset says every file of modes/ is the same image, and so does npimage (a pixel
#: mode is a format): kind `mode`, band same, even for grey levels and 1-bit dithering.
#: Edits are named like the generated ones where they are the same operation; `squash`
#: is a resize to a square (aspect ratio lost); `strong` an edit beyond "slightly
#: retouched" (only required to reach very_similar).
PDQ_LABELS: dict[str, tuple[str, str]] = {
    "modes/original.jpg": ("copy", "same"),
    "modes/RGB.jpg": ("recompress", "same"),
    **{f"modes/{name}": ("mode", "same") for name in (
        "YCbCr.jpg", "CMYK.jpg", "RGBA.png", "P.png", "PA.webp", "HSV.webp", "L.png",
        "LA.png", "F.webp", "I.webp", "LAB.webp", "1.png")},
    "bridge-mods/shrink-a-little.jpg": ("resize", "same"),
    "bridge-mods/shrink-a-lot.jpg": ("resize", "same"),
    "bridge-mods/square-512x512.jpg": ("squash", "retouched"),
    "bridge-mods/square-256x256.jpg": ("squash", "retouched"),
    "bridge-mods/square-128x128.jpg": ("squash", "retouched"),
    "bridge-mods/blur-a-little.jpg": ("blur", "retouched"),
    "bridge-mods/sharpen-a-little.jpg": ("sharpen", "retouched"),
    "bridge-mods/high-contrast.jpg": ("tone", "retouched"),
    "bridge-mods/high-saturation.jpg": ("tone", "retouched"),
    "bridge-mods/blur-a-lot.jpg": ("strong", "very_similar"),
    "bridge-mods/sharpen-a-lot.jpg": ("strong", "very_similar"),
}
PDQ_ORIGINAL = "bridge-mods/aaa-orig.jpg"


@dataclass(frozen=True)
class Row:
    """One image of the evaluation set: manifest and truth columns."""

    image_id: str
    product_id: str
    uri: str
    product: str  # the real product shown (truth), also the manifest's reference
    group_id: str
    kind: str
    expected_band: str = ""
    collection: str = ""  # packages | grocery | iconic | pdq (for the tables)


# -- 1. build ------------------------------------------------------------------------------

def grocery_rows(root: Path) -> list[Row]:
    """Every grocery-store photo (train and val) and iconic picture as an original."""
    rows = []
    for split in ("train", "val"):
        for path in sorted((root / "dataset" / split).rglob("*.jpg")):
            product = path.parent.name
            coll = "packages" if "Packages" in path.parts else "grocery"
            image_id = f"{split}/{path.stem}"
            rows.append(Row(image_id, product, str(path), product, image_id, "original",
                            collection=coll))
    for path in sorted((root / "dataset" / "iconic-images-and-descriptions").rglob("*.jpg")):
        product = path.stem.removesuffix("_Iconic")
        image_id = f"iconic/{product}"
        rows.append(Row(image_id, product, str(path), product, image_id, "original",
                        collection="iconic"))
    return rows


def pdq_rows(root: Path) -> list[Row]:
    """The pdq-edits original and its 25 real variants (labels of PDQ_LABELS)."""
    group = "pdq/aaa-orig"
    rows = [Row(group, "pdq-bridge", str(root / PDQ_ORIGINAL), "pdq-bridge", group,
                "original", collection="pdq")]
    for i, (name, (kind, band)) in enumerate(sorted(PDQ_LABELS.items())):
        rows.append(Row(f"pdq/{name.rsplit('.', 1)[0]}", f"pdq-bridge#{i}", str(root / name),
                        "pdq-bridge", group, kind, band, collection="pdq"))
    return rows


def pick_sources(originals: list[Row], n: int, rng: np.random.Generator) -> list[Row]:
    """Sources of generated edits: iconic and pdq pictures, then grocery photos, half Packages."""
    fixed = [r for r in originals if r.collection in ("iconic", "pdq")]
    rest = max(0, n - len(fixed))
    chosen = list(fixed)
    for coll, share in (("packages", rest // 2), ("grocery", rest - rest // 2)):
        pool = [r for r in originals if r.collection == coll]
        idx = rng.choice(len(pool), size=min(share, len(pool)), replace=False)
        chosen += [pool[i] for i in sorted(idx)]
    return chosen


def _turns(kinds: tuple[str, ...], n: int, rng: np.random.Generator) -> list[str]:
    """n kinds in shuffled rounds: every kind as often as the others (+- 1)."""
    out: list[str] = []
    while len(out) < n:
        out += [kinds[i] for i in rng.permutation(len(kinds))]
    return out[:n]


def make_edit(src: Row, kind: str, out_dir: Path, n: int, seed: int) -> Row:
    """Write one generated edit of `src` (the demo's planted_bytes) and return its row."""
    from npimage_demo.catalogue import ImageSpec, planted_bytes

    rng = np.random.default_rng(seed)
    is_retouch = kind in RETOUCH_KINDS
    ext = ".png" if kind == "format" else ".jpg"
    quality = int(rng.integers(60, 81)) if kind == "recompress" else int(rng.integers(85, 96))
    spec = ImageSpec(image_id=f"{src.image_id}~{kind}", product_key=0, ext=ext,
                     kind="retouch" if is_retouch else kind, group_id=src.group_id,
                     source=src.image_id, edit=kind if is_retouch else "", seed=seed,
                     quality=quality)
    name = spec.image_id.replace("/", "__") + ext
    (out_dir / "images" / name).write_bytes(planted_bytes(Path(src.uri), spec))
    return Row(spec.image_id, f"{src.product}#{n}", f"images/{name}", src.product, src.group_id,
               kind,
               "retouched" if is_retouch else "same", collection=src.collection)


def build_eval_set(out_dir: Path, datasets: Path, n_sources: int, seed: int) -> list[Row]:
    """Write images/, manifest.csv and truth.csv of the evaluation set (see module doc)."""
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    originals = grocery_rows(datasets / "grocery-store")
    pdq = pdq_rows(datasets / "pdq-edits")
    originals.append(pdq[0])
    sources = pick_sources(originals, n_sources, rng)
    same = _turns(SAME_KINDS, len(sources), rng)
    retouch = _turns(RETOUCH_KINDS, len(sources), rng)
    seeds = rng.integers(2**31, size=(len(sources), 2))
    edits = []
    for i, src in enumerate(sources):
        edits.append(make_edit(src, same[i], out_dir, 2 * i, int(seeds[i, 0])))
        edits.append(make_edit(src, retouch[i], out_dir, 2 * i + 1, int(seeds[i, 1])))
    rows = originals + pdq[1:] + edits
    write_truth(out_dir, rows)
    return rows


#: The held-out set (--heldout): stronger edits than the fitted ones, of other photos.
#: (kind, expected band); the same-image kinds go past the fit's range (JPEG q 40-59
#: against 60-80, scale 0.3-0.5 or 1.5-2 against 0.5-0.8 or 1.2-1.5, a grey copy), the
#: retouches too (tone 10-20 % against 5-10 %, crop 5-10 % against 1.5-4 %, rotation
#: 3-5 degrees against 1-3, unsharp mask 150-250 % against 80-150 %; stickers as fitted).
HELDOUT_KINDS: dict[str, str] = {
    "recompress q40-59": "same", "resize 0.3-0.5|1.5-2": "same", "grey": "same",
    "tone 10-20 %": "retouched", "crop 5-10 %": "retouched", "rotate 3-5": "retouched",
    "sharpen 150-250": "retouched", "sticker": "retouched"}


def strong_edit(img, kind: str, rng: np.random.Generator):
    """The picture of a held-out edit of `img` (PIL RGB), and its JPEG quality."""
    from npimage_demo.catalogue import retouch
    from PIL import Image, ImageEnhance, ImageFilter

    sign = (-1, 1)
    if kind == "recompress q40-59":
        return img, int(rng.integers(40, 60))
    if kind == "resize 0.3-0.5|1.5-2":
        f = float(rng.choice((rng.uniform(0.3, 0.5), rng.uniform(1.5, 2.0))))
        size = (max(64, round(img.width * f)), max(64, round(img.height * f)))
        return img.resize(size, Image.Resampling.LANCZOS), 90
    if kind == "grey":
        return img.convert("L").convert("RGB"), 90
    if kind == "tone 10-20 %":
        b, c = 1 + rng.choice(sign, 2) * rng.uniform(0.1, 0.2, 2)
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c), 90
    if kind == "crop 5-10 %":
        fx, fy = rng.uniform(0.05, 0.10, size=2)
        left, top = rng.uniform(0, 1) * fx * img.width, rng.uniform(0, 1) * fy * img.height
        box = (round(left), round(top), round(img.width * (1 - fx) + left),
               round(img.height * (1 - fy) + top))
        return img.crop(box), 90
    if kind == "rotate 3-5":
        fill = tuple(int(v) for v in np.asarray(img)[[0, -1]].reshape(-1, 3).mean(axis=0))
        angle = float(rng.choice(sign) * rng.uniform(3.0, 5.0))
        return img.rotate(angle, Image.Resampling.BICUBIC, fillcolor=fill), 90
    if kind == "sharpen 150-250":
        pct = int(rng.integers(150, 251))
        return img.filter(ImageFilter.UnsharpMask(radius=2, percent=pct)), 90
    return retouch(img, kind, rng), 90


def build_heldout_set(out_dir: Path, datasets: Path, n_sources: int, seed: int,
                      fit_sources: int) -> list[Row]:
    """The held-out set: every original as in the fit set, and HELDOUT_KINDS edits of
    `n_sources` grocery photos (half Packages) that were NOT sources of the fit set
    (build_eval_set with seed 0 and `fit_sources`), each photo one same-image edit and
    one retouch, kinds in balanced turns."""
    import io

    from PIL import Image

    originals = grocery_rows(datasets / "grocery-store")
    pdq = pdq_rows(datasets / "pdq-edits")
    originals.append(pdq[0])
    fitted = {r.image_id for r in pick_sources(originals, fit_sources, np.random.default_rng(0))}
    rng = np.random.default_rng(seed)
    pool = [r for r in originals if r.image_id not in fitted
            and r.collection in ("packages", "grocery")]
    sources = []
    for coll, share in (("packages", n_sources // 2), ("grocery", n_sources - n_sources // 2)):
        sub = [r for r in pool if r.collection == coll]
        sources += [sub[i] for i in sorted(rng.choice(len(sub), min(share, len(sub)), False))]
    same = [k for k, b in HELDOUT_KINDS.items() if b == "same"]
    ret = [k for k, b in HELDOUT_KINDS.items() if b != "same"]
    kinds = list(zip(_turns(tuple(same), len(sources), rng),
                     _turns(tuple(ret), len(sources), rng), strict=True))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    edits = []
    for n, (src, pair) in enumerate(zip(sources, kinds, strict=True)):
        with Image.open(src.uri) as im:
            img = im.convert("RGB")
        for m, kind in enumerate(pair):
            pic, q = strong_edit(img, kind, np.random.default_rng([seed, n, m]))
            image_id = f"{src.image_id}~{kind.split()[0]}"
            name = image_id.replace("/", "__") + ".jpg"
            buf = io.BytesIO()
            pic.save(buf, "JPEG", quality=q)
            (out_dir / "images" / name).write_bytes(buf.getvalue())
            edits.append(Row(image_id, f"{src.product}#{2 * n + m}", f"images/{name}",
                             src.product, src.group_id, kind, HELDOUT_KINDS[kind],
                             collection=src.collection))
    rows = originals + edits  # the pdq variants are fitted pairs: left out
    write_truth(out_dir, rows)
    return rows


def write_truth(out_dir: Path, rows: list[Row]) -> None:
    """manifest.csv and truth.csv of an evaluation set (see the module docstring)."""
    write_csv(out_dir / "manifest.csv", ("image_id", "product_id", "uri", "reference"),
              [(r.image_id, r.product_id, r.uri, r.product) for r in rows])
    write_csv(out_dir / "truth.csv",
              ("image_id", "group_id", "kind", "expected_band", "product", "query",
               "collection"),
              [(r.image_id, r.group_id, r.kind, r.expected_band, r.product,
                int(r.collection == "packages" and r.kind == "original"), r.collection)
               for r in rows])


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


# -- 2. run --------------------------------------------------------------------------------

def run(work: Path, weights: str | None, workers: int | None) -> dict:
    """The real pipeline (FV on) on the evaluation set; returns its summary."""
    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.runner import run_pipeline
    from npimage.storage.runs import new_run_id

    settings = Settings().with_overrides(data_dir=work / "data", fv=True, weights_file=weights)
    again = (work / "data" / "clients" / CLIENT / "current.json").exists()
    ctx = settings_context(CLIENT, str(work / "eval" / "manifest.csv"), new_run_id(), settings,
                           mode="incremental" if again else "full")
    return run_pipeline(ctx, workers=workers, report=False)


# -- 3. fit --------------------------------------------------------------------------------

def labelled(work: Path):
    """The labelled set of the evaluation run (signatures + truth.csv)."""
    from npimage.quality import fitting

    sigs, products, _ = fitting.read_run(work / "data", CLIENT)
    return fitting.labelled_set(sigs, products, work / "eval" / "truth.csv")


def fit_record(args: argparse.Namespace, run_id: str, model: str | None) -> dict:
    """How the weights were fitted, stored under "fit" in the weights file."""
    return {
        "data": "../shared/datasets grocery-store (train + val + iconic) and pdq-edits, with "
                f"edits generated by bench/quality.py (seed {args.seed}, {args.sources} sources)",
        "command": f".venv/bin/python bench/quality.py --seed {args.seed} "
                   f"--sources {args.sources} --write-default",
        "equivalent": "npimage fit-weights --client quality --truth "
                      "bench/out/quality/eval/truth.csv --data-dir bench/out/quality/data",
        "client": CLIENT, "run_id": run_id, "fv_model": model,
    }


def group_folds(ls, seed: int, k: int = 2) -> np.ndarray:
    """Fold number of every image: whole groups (a photo and its edits) per fold."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(int(ls.group.max()) + 1)
    return order[ls.group] % k


def cross_validate(ls, full, opt, seed: int) -> list[dict]:
    """2-fold cross-validation by photo: fit on one half, measure on the other; the
    weights fitted on all, measured on the same half, show what the fit gains by seeing
    it (top-1 is lower than on the whole set: half the photos of each product are left
    as candidates)."""
    from npimage.matching.scoring import Scorer
    from npimage.quality import fitting
    from npimage.quality.curves import classes

    fold = group_folds(ls, seed)
    out = []
    for k in (0, 1):
        t0 = time.perf_counter()
        held = fitting.fit(ls.restrict(fold != k), opt).weights
        test = ls.restrict(fold == k)
        data = classes(test, opt)
        for label, w in (("fitted on the other half", held), ("fitted on all", full)):
            for use_fv in (True, False):
                m = fitting.measure(test, Scorer(w, use_fv), data)
                out.append({"fold": k, "weights": label, "fv": use_fv, "metrics": m})
        print(f"cross-validation fold {k}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


# -- 4. tables -----------------------------------------------------------------------------

def previous_defaults():
    """The weights before this fit (npimage 0.1.0): hand-set hash curve, FV uncalibrated."""
    from npimage.matching.scoring import IDENTITY, Weights

    def b(n: int) -> float:
        return 1 - n / 64

    hc = ((0.0, 0.0), (b(32), 0.5), (b(22), 0.82), (b(16), 0.90), (b(11), 0.95), (b(4), 0.99),
          (1.0, 1.0))
    return Weights(dah=0.15, ddh=0.30, dph=0.25, dfv=0.30,
                   curves={"dah": hc, "ddh": hc, "dph": hc, "dfv": IDENTITY},
                   source="previous defaults", hashes_only=None)


def scorers(weights) -> list[tuple[str, Any]]:
    """The columns of the table: ours with FV, hashes alone, FV alone, previous defaults."""
    from dataclasses import replace

    from npimage.matching.scoring import Scorer

    fv_only = replace(weights, dah=0.0, ddh=0.0, dph=0.0, dfv=1.0, hashes_only=None)
    old = previous_defaults()
    return [("ours (FV on)", Scorer(weights, True)),
            ("ours, hashes alone (FV off)", Scorer(weights, False)),
            ("FV alone", Scorer(fv_only, True)),
            ("previous defaults, FV on", Scorer(old, True)),
            ("previous defaults, FV off", Scorer(old, False))]


#: The POC's own figures (seed/NPImageNearest-POC.md), for the last column.
POC = {"same": "copies 100 %, recompressions 99 % (score); 'reliable at 95 %'",
       "retouched": "scores 90-95 %, i.e. below 0.95; 'reliable at 95 %'",
       "neg_same": "not measured", "neg_ret": "not measured",
       "top1": "85 % on look-alike products (CHUV), 95 % on distinct ones"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _same_product_ret(m) -> int:
    """Pairs of different photos of the same product scored >= 0.95."""
    return sum(m.neg_bands["same product"][b] for b in ("same", "retouched"))


def quality_table(columns: Sequence[tuple[str, Any]]) -> str:
    """Markdown: one row per target, one column per scorer, the POC's claims last."""
    head = "| measure | " + " | ".join(n for n, _ in columns) + " | POC (claimed) |"
    rows = [head, "|" + "---|" * (len(columns) + 2)]

    def row(label: str, cells: list[str], poc: str) -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {poc} |")

    ms = [m for _, m in columns]
    row("same image (copy, recompress, resize, format, mode) in `same`, all / worst kind",
        [f"{_pct(m.same_all)} / {_pct(m.same)}" for m in ms], POC["same"])
    row("retouched at >= 0.95, all / worst kind",
        [f"{_pct(m.retouched_all)} / {_pct(m.retouched)}" for m in ms], POC["retouched"])
    row("pairs of different photos in `same`", [str(m.neg_same) for m in ms], POC["neg_same"])
    row("pairs of different photos >= 0.95 (of which same product)",
        [f"{m.neg_retouched} ({_same_product_ret(m)})" for m in ms], POC["neg_ret"])
    row("top-1 product right (grocery Packages, all candidates)",
        [_pct(m.top1) for m in ms], POC["top1"])
    return "\n".join(rows)


def kind_table(m) -> str:
    """Markdown: per kind of labelled pair, how many reach each band."""
    from npimage.quality.labelled import BAND_NAMES

    names = (*BAND_NAMES, "below")
    rows = ["| kind | pairs | must reach | recall | " + " | ".join(names) + " |",
            "|" + "---|" * (len(names) + 4)]
    for kind, k in m.by_kind.items():
        rows.append(f"| {kind.replace('|', '/')} | {k['n']} | {k['expected']} | "
                    f"{_pct(k['recall'])} | "
                    + " | ".join(str(k["bands"][b]) for b in names) + " |")
    for cls, counts in m.neg_bands.items():
        rows.append(f"| different photos, {cls} | {sum(counts.values())} | - | - | "
                    + " | ".join(str(counts[b]) for b in names) + " |")
    return "\n".join(rows)


def cv_table(results: list[dict]) -> str:
    """Markdown: held-out metrics of the 2-fold cross-validation."""
    rows = ["| fold | FV | weights | same, all / worst kind | retouched, all / worst kind "
            "| different photos in same / >= 0.95 | top-1 product |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["metrics"]
        rows.append(f"| {r['fold']} | {'on' if r['fv'] else 'off'} | {r['weights']} | "
                    f"{_pct(m.same_all)} / {_pct(m.same)} | "
                    f"{_pct(m.retouched_all)} / {_pct(m.retouched)} | "
                    f"{m.neg_same} / {m.neg_retouched} | {_pct(m.top1)} |")
    return "\n".join(rows)


# -- 5. the pipeline's own view, and the demo catalogue ----------------------------------------

def demo_check(work: Path, weights: Path, seed: int, workers: int | None) -> str:
    """The demo catalogue with these weights, FV on and off: planted duplicates found in
    band (what `npimage demo` prints), and pairs of different pictures >= 0.95."""
    import duckdb
    from npimage_demo.catalogue import build_demo_catalogue

    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.quality.evaluate import planted_found
    from npimage.runner import run_pipeline

    demo = build_demo_catalogue(work / "demo", n_products=160, seed=seed)
    with demo.truth.open(newline="", encoding="utf-8") as fh:
        group = {r["image_id"]: r["group_id"] for r in csv.DictReader(fh)}
    lines = ["| FV | kind | planted | found | in band |", "|---|---|---|---|---|"]
    wrong = {}
    for fv in (True, False):
        data = work / ("demo-data-fv" if fv else "demo-data-nofv")
        settings = Settings().with_overrides(data_dir=data, fv=fv, weights_file=str(weights))
        run_pipeline(settings_context("demo", str(demo.manifest), f"q{int(time.time())}",
                                      settings), workers=workers, report=False)
        for r in planted_found(data / "warehouse.duckdb", "demo", demo.truth):
            lines.append(f"| {'on' if fv else 'off'} | {r.kind} | {r.total} | {r.found} | "
                         f"{r.in_band} |")
        con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
        pairs = con.execute("SELECT image_id, match_image_id, band FROM image_matches "
                            "WHERE client_id = 'demo' AND image_id < match_image_id").fetchall()
        con.close()
        wrong[fv] = {b: sum(1 for a, m, band in pairs if band == b and group[a] != group[m])
                     for b in ("same", "retouched")}
    lines.append("")
    lines.append("pairs of different pictures (look-alike packs, front/back) in same / retouched: "
                 + ", ".join(f"FV {'on' if fv else 'off'} {w['same']} / {w['retouched']}"
                             for fv, w in wrong.items()))
    return "\n".join(lines)


# -- measure given weights files (before / after a refit, the held-out set) -------------

def pair_components(ls, a: str, b: str) -> str:
    """aHash, dHash, pHash bits apart and FV cosine of two images of a labelled set."""
    where = {str(x): k for k, x in enumerate(ls.ids)}
    i, j = where[a], where[b]
    bits = [int(x ^ y).bit_count() for x, y in zip(ls.hashes[i], ls.hashes[j], strict=True)]
    cos = "" if ls.fv is None else f", cosine {float(ls.fv[i] @ ls.fv[j]):.3f}"
    return f"aHash {bits[0]}, dHash {bits[1]}, pHash {bits[2]} bits{cos}"


def measure_files(args: argparse.Namespace) -> int:
    """The tables of every weights file of --measure on the built set, FV on and off,
    without fitting (the same exact measure as the fit's: every pair, every candidate);
    with --pipeline also a run with each file and what its tables store."""
    from npimage.matching.scoring import Scorer, load_weights
    from npimage.quality import fitting
    from npimage.quality.curves import classes

    t0 = time.perf_counter()
    ls = labelled(args.work)
    data = classes(ls, fitting.FitOptions(seed=args.seed))
    columns = [(f"{Path(f).name}, FV {'on' if fv else 'off'}",
                fitting.measure(ls, Scorer(load_weights(f), fv), data))
               for f in args.measure for fv in (True, False)]
    print(f"\n{args.work}: {len(ls)} images, {len(ls.pos[0])} labelled pairs of one photo, "
          f"{len(data.neg)} pairs of different photos, {data.cand.n_queries} top-1 queries\n")
    print(quality_table(columns))
    for name, m in columns:
        print(f"\n{name}, per kind:\n")
        print(kind_table(m))
        print("\nclosest pairs of different photos:")
        for a, b, score in m.worst_negatives[:5]:
            print(f"  {score:.4f}  {a}  {b}  ({pair_components(ls, a, b)})")
    if args.pipeline:
        for f in args.measure:
            print(f"\npipeline with {f}:\n")
            print(pipeline_view(args.work, Path(f), args.workers))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def pipeline_view(work: Path, weights: Path, workers: int | None) -> str:
    """A run with `weights` (compare, verify, merge: the real pipeline) and what it
    stores: labelled pairs found in band, pairs of different photos per band after
    verification and the compare score they had before it."""
    import duckdb

    from npimage.quality.evaluate import planted_found

    named = work / f"weights-{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}.json"
    named.write_bytes(weights.read_bytes())
    info = run(work, str(named), workers)
    lines = [f"run {info['run_id']}: pairs by band {json.dumps(info['image_pairs_by_band'])}",
             "", "| kind | pairs | found | in band |", "|---|---|---|---|"]
    truth = work / "eval" / "truth.csv"
    for r in planted_found(work / "data" / "warehouse.duckdb", CLIENT, truth):
        lines.append(f"| {r.kind} | {r.total} | {r.found} | {r.in_band} |")
    with truth.open(newline="", encoding="utf-8") as fh:
        group = {r["image_id"]: r["group_id"] for r in csv.DictReader(fh)}
    con = duckdb.connect(str(work / "data" / "warehouse.duckdb"), read_only=True)
    rows = con.execute("SELECT image_id, match_image_id, score, score_before, band, "
                       "verify_reason FROM image_matches WHERE client_id = ? "
                       "AND image_id < match_image_id AND greatest(score, score_before) >= 0.95",
                       [CLIENT]).fetchall()
    con.close()
    neg = [r for r in rows if group.get(r[0]) != group.get(r[1])]
    lines.append(f"\npairs of different photos scored >= 0.95 by compare: "
                 f"{sum(r[3] >= 0.95 for r in neg)}, >= 0.99: {sum(r[3] >= 0.99 for r in neg)}; "
                 f"stored (after verification) in same: {sum(r[4] == 'same' for r in neg)}, "
                 f">= 0.95: {sum(r[2] >= 0.95 for r in neg)}")
    for a, b, score, before, band, reason in sorted(neg, key=lambda r: -r[3])[:8]:
        lines.append(f"  {before:.4f} -> {score:.4f} {band:<12} {a}  {b}  {reason or ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "quality")
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", type=int, default=800, help="photos that get generated edits")
    ap.add_argument("--weights", help="weights file for the run (default: shipped)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--rebuild", action="store_true", help="build and run even if done before")
    ap.add_argument("--write-default", action="store_true",
                    help="also write the fitted weights to plugins/npimage/weights/default.json")
    ap.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo catalogue check")
    ap.add_argument("--families", action="store_true",
                    help="only the family evaluation (#18): leave-one-product-out and planted "
                         "misfiles on the grocery coarse classes")
    ap.add_argument("--no-families", action="store_true", help="skip the family evaluation")
    ap.add_argument("--measure", action="append", metavar="FILE",
                    help="measure this weights file (repeatable) instead of fitting")
    ap.add_argument("--same-quantiles", metavar="Q,Q",
                    help="quantiles of same-image pairs tried for the hashes' 0.99 knots "
                         "(default: FitOptions', 0.005)")
    ap.add_argument("--pipeline", action="store_true",
                    help="with --measure: also a pipeline run with each file (verify included)")
    ap.add_argument("--heldout", type=int, metavar="N",
                    help="build the held-out set instead: stronger edits of N grocery photos "
                         "that are not sources of the fit set (default work "
                         "bench/out/quality-heldout); use with --measure")
    args = ap.parse_args(argv)
    if args.heldout and args.work == REPO / "bench" / "out" / "quality":
        args.work = REPO / "bench" / "out" / "quality-heldout"
    args.work = args.work.resolve()
    if not (args.datasets / "grocery-store").is_dir():
        print(f"datasets not found: {args.datasets}", file=sys.stderr)
        return 2
    if args.families:
        print(families_table(args))
        return 0
    t0 = time.perf_counter()
    eval_dir = args.work / "eval"
    if args.rebuild or not (eval_dir / "truth.csv").exists():
        rows = (build_heldout_set(eval_dir, args.datasets, args.heldout, args.seed, args.sources)
                if args.heldout else
                build_eval_set(eval_dir, args.datasets, args.sources, args.seed))
        print(f"build: {len(rows)} images in {time.perf_counter() - t0:.0f} s -> {eval_dir}")
    if args.rebuild or not (args.work / "data" / "warehouse.duckdb").exists():
        t1 = time.perf_counter()
        info = run(args.work, args.weights, args.workers)
        print(f"run: {info['images']} images in {time.perf_counter() - t1:.0f} s")
        print(json.dumps(info["image_pairs_by_band"]))
    return measure_files(args) if args.measure else evaluate_and_fit(args)


def evaluate_and_fit(args: argparse.Namespace) -> int:
    """Steps 3-5 on a built and run evaluation set; prints the tables."""
    from dataclasses import replace

    from npimage.quality import fitting
    from npimage.quality.curves import classes
    from npimage.quality.evaluate import planted_found
    from npimage.quality.labelled import run_files

    t0 = time.perf_counter()
    ls = labelled(args.work)
    opt = fitting.FitOptions(seed=args.seed)
    if args.same_quantiles:  # the fit's 0.99 knots of the hashes (docs/QUALITY.md, refit)
        opt = replace(opt, same_quantiles=tuple(float(q) for q in args.same_quantiles.split(",")))
    result = fitting.fit(ls, opt, source="bench/quality.py")
    run_id = run_files(args.work / "data", CLIENT)[0]
    models = sorted({str(m) for m in fitting.read_run(args.work / "data", CLIENT)[0]["fv_model"]
                     .to_pylist() if m})
    result.record = {**fit_record(args, run_id, models[0] if models else None), **result.record}
    out = args.work / "weights.json"
    out.write_text(result.to_json(), encoding="utf-8")
    print(f"fit: {time.perf_counter() - t0:.0f} s -> {out}")
    print(json.dumps({"weights": result.document()["weights"],
                      "hashes_only": result.document()["hashes_only"]["weights"],
                      "chosen": result.record["chosen"]}))
    if args.write_default:
        default = REPO / "plugins" / "npimage" / "weights" / "default.json"
        default.write_text(out.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {default}")
    data = classes(ls, opt)
    columns = [(name, fitting.measure(ls, sc, data)) for name, sc in scorers(result.weights)]
    print(f"\n{len(ls)} images, {len(ls.pos[0])} labelled pairs of one photo, "
          f"{len(data.neg)} pairs of different photos, {data.cand.n_queries} top-1 queries\n")
    print(quality_table(columns))
    for k in (0, 1):
        print(f"\n{columns[k][0]}, per kind:\n")
        print(kind_table(columns[k][1]))
    print("\nclosest pairs of different photos (ours, FV on):")
    for a, b, score in columns[0][1].worst_negatives[:5]:
        print(f"  {score:.4f}  {a}  {b}")
    if not args.no_cv:
        print("\n2-fold cross-validation by photo (metrics on the held-out photos):\n")
        print(cv_table(cross_validate(ls, result.weights, opt, args.seed)))
    # a run compares its weights file by path: name the file by its content
    named = args.work / f"weights-{hashlib.sha256(out.read_bytes()).hexdigest()[:12]}.json"
    named.write_bytes(out.read_bytes())
    info = run(args.work, str(named), args.workers)
    print(f"\npipeline run {info['run_id']} with these weights: pairs by band "
          f"{json.dumps(info['image_pairs_by_band'])}; labelled pairs found in both directions "
          "and in band (npimage.quality.evaluate.planted_found):\n")
    print("| kind | pairs | found | in band |\n|---|---|---|---|")
    for r in planted_found(args.work / "data" / "warehouse.duckdb", CLIENT,
                           args.work / "eval" / "truth.csv"):
        print(f"| {r.kind} | {r.total} | {r.found} | {r.in_band} |")
    if not args.no_demo:
        print("\n`npimage demo` catalogue (160 products, seed 0), FV on and off:\n")
        print(demo_check(args.work, out, 0, args.workers))
    if not args.no_families:
        print("\nfamilies (#18), grocery coarse classes:\n")
        print(families_table(args))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def families_table(args: argparse.Namespace) -> str:
    """Family prediction on the grocery photos (npimage.families.evaluate): leave-one-
    product-out top-1/top-3 and the misfiled flag; FV cached in bench/out/grocery_fv.npz."""
    from npimage.config import Settings
    from npimage.families.evaluate import format_reports, grocery_reports

    t0 = time.perf_counter()
    cache = REPO / "bench" / "out" / "grocery_fv.npz"
    models = Settings().with_overrides(data_dir=args.work / "data").model_cache
    reports, model_id = grocery_reports(args.datasets / "grocery-store", models, cache)
    return f"{format_reports(reports, model_id)}\n({time.perf_counter() - t0:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())
