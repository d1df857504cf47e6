"""Per-image throughput: npimage end to end against the POC loop, imagededup and fastdup.

All on the same files, in one run, so that ratios are measured under the same load:

- the POC's method: a Python loop of imagehash average/difference/perceptual hash on each
  opened file + sha256 of its bytes, 1 process (in this interpreter);
- imagededup's hashing (PHash.encode_images, its own worker processes) and fastdup
  (its bundled ONNX model: embeddings, kNN and components), each installed by this script
  in its own throwaway virtualenv under --peers-dir (never in the project's environment);
- `npimage run` end to end (extract → signatures → compare → merge → publish, no report),
  hashes only and with FV, as a subprocess with a fresh data dir;
- where npimage's time goes per step (read, sha256, decode, hashes, FV, Parquet,
  thumbnails), timed in this process on a sample of the same files.

Photo sets: ~350 px smartphone photos (grocery-store) and ~1600 px photos. The datasets
hold only a handful of distinct 1600 px photos (pdq-edits), so the large set is the
grocery photos upscaled to 1600 px (Lanczos, JPEG q90) into a temporary folder: real
photo content at the size where decoding dominates.

    .venv/bin/python bench/throughput.py [--limit 2000] [--large 300] [--no-peers]

Prints Markdown tables; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
GROCERY = DATASETS / "grocery-store" / "dataset" / "train"
NPIMAGE = Path(sys.executable).with_name("npimage")
MAX_PIXELS = 250_000_000

#: Peer tools and what their driver does; each runs in its own virtualenv.
PEERS = {
    "imagededup": ("imagededup==0.3.3.post2", """
import sys, time
from imagededup.methods import PHash
t0 = time.perf_counter()
PHash(verbose=False).encode_images(image_dir=sys.argv[1], recursive=True)
print(time.perf_counter() - t0)
"""),
    "fastdup": ("fastdup==2.54", """
import sys, time, tempfile
import fastdup
work = tempfile.mkdtemp()
t0 = time.perf_counter()
fd = fastdup.create(work_dir=work, input_dir=sys.argv[1])
fd.run(num_threads=2, overwrite=True, verbose=False, print_summary=False)
print(time.perf_counter() - t0)
"""),
}


def poc_loop(paths: list[Path]) -> float:
    """Seconds of the POC's loop over `paths` (bench/signatures.py's poc_method)."""
    from signatures import poc_method  # bench/ is on sys.path when run as a script

    t0 = time.perf_counter()
    poc_method(paths)
    return time.perf_counter() - t0


def peer_seconds(name: str, folder: Path, peers_dir: Path) -> float | None:
    """Seconds the peer takes on `folder`, installing it first in its own virtualenv."""
    spec, driver = PEERS[name]
    venv = peers_dir / name
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", spec],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: install failed: {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            shutil.rmtree(venv, ignore_errors=True)
            return None
    script = venv / "driver.py"
    script.write_text(driver)
    done = subprocess.run([str(python), str(script), str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        print(f"{name}: failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def npimage_seconds(folder: Path, fv: bool, workers: int) -> float:
    """Wall seconds of `npimage run` end to end on `folder` in a fresh data dir."""
    with tempfile.TemporaryDirectory() as data:
        cmd = [str(NPIMAGE), "run", "--client", "bench", "--source", str(folder),
               "--data-dir", data, "--no-report", "--workers", str(workers)]
        if not fv:
            cmd.append("--no-fv")
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"npimage run failed: {done.stderr.strip()[-600:]}")
        return seconds


def step_seconds(paths: list[Path], fv: bool) -> dict[str, float]:
    """Seconds per image of each per-image step of npimage, on `paths`, in this process."""
    from npimage.ingest.decode import decode
    from npimage.matching.hashing import image_hashes

    steps = dict.fromkeys(("read", "sha256", "decode", "hashes", "fv", "parquet",
                           "thumbnails"), 0.0)
    decoded, rows = [], []
    for p in paths:
        t0 = time.perf_counter()
        data = p.read_bytes()
        t1 = time.perf_counter()
        digest = hashlib.sha256(data).hexdigest()
        t2 = time.perf_counter()
        img = decode(data, MAX_PIXELS)
        t3 = time.perf_counter()
        rows.append((digest, *image_hashes(img.rgb)))
        t4 = time.perf_counter()
        thumb = img.rgb.copy()
        thumb.thumbnail((240, 240))
        thumb.save(io.BytesIO(), "JPEG", quality=80)
        t5 = time.perf_counter()
        decoded.append(img.rgb)
        for key, dt in zip(("read", "sha256", "decode", "hashes", "thumbnails"),
                           (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[key] += dt
    t0 = time.perf_counter()
    table = pa.table({"sha256": [r[0] for r in rows], "ahash": [r[1] for r in rows],
                      "dhash": [r[2] for r in rows], "phash": [r[3] for r in rows]})
    pq.write_table(table, io.BytesIO())
    steps["parquet"] = time.perf_counter() - t0
    if fv:
        from npimage.fv import load_extractor

        extractor = load_extractor("efficientnet-lite0", REPO / "data" / "models")
        extractor.embed(decoded[:8])  # model start-up is paid once per worker
        t0 = time.perf_counter()
        for start in range(0, len(decoded), 64):
            extractor.embed(decoded[start:start + 64])
        steps["fv"] = time.perf_counter() - t0
    return {k: v / len(paths) for k, v in steps.items()}


def upscaled(paths: list[Path], folder: Path, side: int = 1600) -> list[Path]:
    """Copies of `paths` resized so that their long side is `side` px (JPEG q90)."""
    out = []
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            scale = side / max(img.size)
            big = img.convert("RGB").resize((round(img.width * scale),
                                             round(img.height * scale)), Image.LANCZOS)
        target = folder / f"{i:05d}.jpg"
        big.save(target, "JPEG", quality=90)
        out.append(target)
    return out


def linked(paths: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to `paths`: every tool reads the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        (folder / f"{i:05d}{p.suffix}").symlink_to(p.resolve())
    return folder


def measure(name: str, folder: Path, args: argparse.Namespace) -> dict[str, object]:
    """Every tool on one folder; a dict of images/s and ratios."""
    paths = sorted(folder.iterdir())
    n = len(paths)
    for p in paths:
        p.read_bytes()  # warm the page cache for everyone
    seconds = {"POC loop": poc_loop(paths)}
    if not args.no_peers:
        for peer in PEERS:
            got = peer_seconds(peer, folder, args.peers_dir)
            if got is not None:
                seconds[peer] = got
    seconds["npimage hashes only"] = npimage_seconds(folder, False, args.workers)
    if not args.no_fv:
        seconds["npimage with FV"] = npimage_seconds(folder, True, args.workers)
    rates = {k: n / v for k, v in seconds.items()}
    print(f"\n### {name}: {n} images\n")
    print("| tool | seconds | images/s | npimage hashes-only ÷ it | npimage FV ÷ it |")
    print("|---|---|---|---|---|")
    for k, v in seconds.items():
        ours = rates["npimage hashes only"] / rates[k]
        fv = rates.get("npimage with FV", 0) / rates[k]
        print(f"| {k} | {v:.1f} | {rates[k]:.0f} | {ours:.2f}x | {fv:.2f}x |")
    steps = step_seconds(paths[: args.sample], not args.no_fv)
    print("\n| npimage step (1 process) | ms / image |")
    print("|---|---|")
    for k, v in steps.items():
        print(f"| {k} | {v * 1000:.2f} |")
    return {"set": name, "images": n, "seconds": seconds, "images_per_s": rates,
            "step_ms": {k: v * 1000 for k, v in steps.items()}}


def main(argv: list[str] | None = None) -> int:
    """Build the two photo sets, time every tool on each, print tables and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=2000, help="~350 px photos (default 2000)")
    ap.add_argument("--large", type=int, default=300, help="~1600 px photos (default 300)")
    ap.add_argument("--sample", type=int, default=256, help="images in the per-step table")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-fv", action="store_true", help="skip the FV rows")
    ap.add_argument("--no-peers", action="store_true", help="skip imagededup and fastdup")
    ap.add_argument("--peers-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "npimage-bench-peers",
                    help="where the peers' throwaway virtualenvs live")
    args = ap.parse_args(argv)
    if not GROCERY.is_dir():
        print(f"dataset not found: {GROCERY} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    photos = sorted(GROCERY.rglob("*.jpg"))
    print(f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{args.workers} npimage workers")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        small = linked(photos[: args.limit], Path(tmp) / "small")
        results.append(measure("~350 px photos (grocery-store)", small, args))
        big_dir = Path(tmp) / "large"
        big_dir.mkdir()
        upscaled(photos[: args.large], big_dir)
        results.append(measure("~1600 px photos (grocery-store upscaled)", big_dir, args))
    print(json.dumps({"load": os.getloadavg()[0], "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
