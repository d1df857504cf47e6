"""Match quality on real photos: build the evaluation set, run the pipeline, fit, evaluate.

Data (nothing downloaded; anyone can rebuild it): ../shared/datasets/grocery-store
(smartphone photos of 81 grocery products, 31 of them look-alike cartons under
Packages, plus one "iconic" catalogue picture per product) and pdq-edits (one photo
with 11 real edits and 14 pixel-mode/format variants), and edits generated here from
them with a fixed seed.

Steps (each can be skipped when its output exists, see --help):

1. build: `<work>/eval/` gets `manifest.csv` (image_id,product_id,uri,reference; the
   real photos are referenced where they are, the generated edits are written to
   `images/`) and `truth.csv` (image_id,group_id,kind,expected_band,product: group =
   the source photo, expected_band = the band the pair (source, image) must reach,
   product = the real product shown). Sources of generated edits: every iconic picture,
   the pdq original, and a seeded sample of grocery photos (half of them Packages).
   Each source gets one edit of the kinds that must stay in band `same` (copy,
   recompress, resize, format) and one retouch (tone, sticker, crop <= 5 %,
   rotation <= 3 degrees, sharpen: npimage.demo.retouch), kinds in balanced turns.
2. run: the real pipeline (npimage.runner.run_pipeline, FV on) into `<work>/data`,
   client `quality`, with the weights given (default: the shipped ones).
3. fit: npimage.fitting on the run's signatures and truth.csv -> `<work>/weights.json`
   (2-fold cross-validation by source photo too, to show the fit does not overfit).
4. table: the metrics of the issue's targets for each scorer (Markdown, for
   docs/QUALITY.md), computed from the run's signatures over every labelled pair, and
   `npimage evaluate` on the published run.

    .venv/bin/python bench/quality.py --work bench/out/quality [--seed 0] [--sources 800]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
CLIENT = "quality"

#: Generated edits that must land in band `same`, and the retouches that must reach
#: `retouched` (npimage.demo's definitions, so the demo and this set agree).
SAME_KINDS = ("copy", "recompress", "resize", "format")
RETOUCH_KINDS = ("tone", "sticker", "crop", "rotate", "sharpen")

#: pdq-edits files: (kind, expected band) of the pair (bridge-mods/aaa-orig.jpg, file).
#: Kinds named like the generated ones where they are the same operation; `squash` is a
#: resize to a square (aspect ratio lost), `grey` a conversion to grey levels, `strong`
#: an edit beyond "slightly retouched" (only required to reach very_similar).
PDQ_LABELS: dict[str, tuple[str, str]] = {
    "modes/original.jpg": ("copy", "same"),
    "modes/RGB.jpg": ("recompress", "same"),
    "modes/YCbCr.jpg": ("format", "same"),
    "modes/CMYK.jpg": ("format", "same"),
    "modes/RGBA.png": ("format", "same"),
    "modes/P.png": ("format", "same"),
    "modes/PA.webp": ("format", "same"),
    "modes/HSV.webp": ("format", "same"),
    "bridge-mods/shrink-a-little.jpg": ("resize", "same"),
    "bridge-mods/shrink-a-lot.jpg": ("resize", "same"),
    "bridge-mods/square-512x512.jpg": ("squash", "retouched"),
    "bridge-mods/square-256x256.jpg": ("squash", "retouched"),
    "bridge-mods/square-128x128.jpg": ("squash", "retouched"),
    "bridge-mods/blur-a-little.jpg": ("blur", "retouched"),
    "bridge-mods/sharpen-a-little.jpg": ("sharpen", "retouched"),
    "bridge-mods/high-contrast.jpg": ("tone", "retouched"),
    "bridge-mods/high-saturation.jpg": ("tone", "retouched"),
    "modes/L.png": ("grey", "retouched"),
    "modes/LA.png": ("grey", "retouched"),
    "modes/F.webp": ("grey", "retouched"),
    "modes/I.webp": ("grey", "retouched"),
    "modes/LAB.webp": ("grey", "retouched"),
    "bridge-mods/blur-a-lot.jpg": ("strong", "very_similar"),
    "bridge-mods/sharpen-a-lot.jpg": ("strong", "very_similar"),
    "modes/1.png": ("strong", "very_similar"),
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
    collection: str = ""  # packages | grocery | iconic | pdq (for the report's breakdown)


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
    """Write one generated edit of `src` (npimage.demo's planted_bytes) and return its row."""
    from npimage.demo import ImageSpec, planted_bytes

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
    write_csv(out_dir / "manifest.csv", ("image_id", "product_id", "uri", "reference"),
              [(r.image_id, r.product_id, r.uri, r.product) for r in rows])
    write_csv(out_dir / "truth.csv",
              ("image_id", "group_id", "kind", "expected_band", "product", "collection"),
              [(r.image_id, r.group_id, r.kind, r.expected_band, r.product, r.collection)
               for r in rows])
    return rows


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
    from npimage.runs import new_run_id

    settings = Settings().with_overrides(data_dir=work / "data", fv=True, weights_file=weights)
    ctx = settings_context(CLIENT, str(work / "eval" / "manifest.csv"), new_run_id(), settings)
    return run_pipeline(ctx, workers=workers, report=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "quality")
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", type=int, default=800, help="photos that get generated edits")
    ap.add_argument("--weights", help="weights file for the run (default: shipped)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--rebuild", action="store_true", help="build and run even if done before")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if not (args.datasets / "grocery-store").is_dir():
        print(f"datasets not found: {args.datasets}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    eval_dir = args.work / "eval"
    if args.rebuild or not (eval_dir / "truth.csv").exists():
        rows = build_eval_set(eval_dir, args.datasets, args.sources, args.seed)
        print(f"build: {len(rows)} images in {time.perf_counter() - t0:.0f} s -> {eval_dir}")
    if args.rebuild or not (args.work / "data" / "warehouse.duckdb").exists():
        t1 = time.perf_counter()
        info = run(args.work, args.weights, args.workers)
        print(f"run: {info['images']} images in {time.perf_counter() - t1:.0f} s")
        print(json.dumps(info["image_pairs_by_band"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
