"""Per-image throughput: npimage end to end against the POC loop, imagededup and fastdup.

All on the same files, in one run, so that ratios are measured under the same load:

- the POC's method: a Python loop of imagehash average/difference/perceptual hash on each
  opened file + sha256 of its bytes, 1 process (in this interpreter);
- imagededup's hashing (PHash.encode_images, its own worker processes) and fastdup
  (its bundled ONNX model: embeddings, kNN and components), each installed by this script
  in its own throwaway virtualenv under --peers-dir (never in the project's environment);
- `npimage run` end to end (extract → signatures → compare → merge → publish, no report),
  hashes only and with FV, as a subprocess with a fresh data dir, after one untimed run of
  each (Numba compiles its kernels once per checkout and CPU: not a per-run cost);
- where npimage's time goes: per stage of each run (its `--timings`), and per step of the
  signature stage (read, sha256, decode, hashes, detail, FV, Parquet, thumbnails) timed on
  its real code path (`pipeline.signatures` under cProfile) on a sample of the same files;
- the curve of images/s against the number of workers (`--workers-curve 1 2 ...`).

Photo sets: ~350 px smartphone photos (grocery-store) and ~1600 px photos. The datasets
hold only a handful of distinct 1600 px photos (pdq-edits), so the large set is the
grocery photos upscaled to 1600 px (Lanczos, JPEG q90) into a temporary folder: real
photo content at the size where decoding dominates.

    .venv/bin/python bench/throughput.py [--limit 2000] [--large 300] [--no-peers] [--no-fv]
                                         [--workers-curve 1 2] [--codes]

Prints Markdown tables; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def npimage_run(folder: Path, fv: bool, workers: int, codes: bool = False
                ) -> tuple[float, dict[str, float], float]:
    """Wall seconds of `npimage run` end to end on `folder` in a fresh data dir, the
    seconds of each of its stages (its --timings table) and the CPU seconds (user +
    system) of the run and all its processes, which the load of other programs moves
    less than wall time. Pack reading is off unless `codes`: the peers read no barcode."""
    with tempfile.TemporaryDirectory() as data:
        cmd = [str(NPIMAGE), "run", "--client", "bench", "--source", str(folder),
               "--data-dir", data, "--no-report", "--workers", str(workers), "--timings"]
        if not fv:
            cmd.append("--no-fv")
        if not codes:
            cmd += ["--read", "none"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"npimage run failed: {done.stderr.strip()[-600:]}")
        table = done.stdout.split("stage             seconds")[-1]
        stages = {m.group(1): float(m.group(2))
                  for m in re.finditer(r"^  (\w+) +([\d.]+)$", table, re.M)}
        stages.pop("total", None)
        return seconds, stages, cpu


#: Functions of the signature code path whose time makes a step of the per-step table,
#: matched by name wherever they are in the call tree (so the table follows the code).
STEP_FUNCTIONS = {
    "read": ("read_bytes", "read_all"),
    "sha256": ("openssl_sha256", "sha256", "hexdigest"),
    "decode": ("decode", "decode_for", "draft"),
    "hashes": ("image_hashes", "grey_copy", "hashes_of_greys"),
    "detail": ("detail_signature",),
    "fv": ("embed",),
    "parquet": ("write_table",),
    "thumbnails": ("thumbnail_jpeg",),
}
STEP_NAMES = {name for names in STEP_FUNCTIONS.values() for name in names}


def step_seconds(paths: list[Path], fv: bool,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds per image of each step of npimage's signature stage, measured on its real
    code path (`pipeline.signatures` on one batch of `paths`, in this process).

    The batch runs twice: once plain for the total, once under cProfile for the shares
    of the step functions (STEP_FUNCTIONS, cumulative, outermost call only); "other" is
    the rest (batch files, rows, resume markers). FV's start-up (TensorFlow and the
    model) is paid before, once, as in a worker. `clock`: time.process_time for CPU
    seconds (the total and the profiler's clock), which other processes' load moves less.
    """
    import cProfile
    import pstats

    from npimage import pipeline
    from npimage.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        src = linked(paths, Path(tmp) / "src")
        settings = Settings().with_overrides(data_dir=Path(tmp) / "data", fv=fv, read="none",
                                             batch_size=len(paths))
        ctx = pipeline.settings_context("steps", str(src), "r1", settings)
        pipeline.extract(ctx)
        batch = pipeline.plan(ctx)  # one batch: the sample
        if fv:
            pipeline._extractor(ctx.fv_model, str(settings.model_cache)).embed(
                [Image.new("RGB", (64, 64))])  # start-up, once per worker
        pipeline.signatures(ctx, batch[0])
        _clear(ctx.run_dir)
        t0 = clock()
        pipeline.signatures(ctx, batch[0])
        total = clock() - t0
        _clear(ctx.run_dir)
        profiler = cProfile.Profile(clock)
        profiler.runcall(pipeline.signatures, ctx, batch[0])
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    profiled = sum(v[3] for k, v in stats.items() if k[2] == "signatures"
                   and k[0].endswith("pipeline.py"))
    steps = {step: _cumulative(stats, names, STEP_NAMES) for step, names in
             STEP_FUNCTIONS.items()}
    steps["other"] = max(profiled - sum(steps.values()), 0.0)
    scale = total / profiled if profiled else 1.0  # the profiler's own cost taken out
    return {k: v * scale / len(paths) for k, v in steps.items()}


def _clear(run_dir: Path) -> None:
    """Forget a computed batch so that it is computed again (not resumed)."""
    for name in ("sig_batches", "sig_rejects", "sig_counts"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _name(key: tuple[str, int, str]) -> str:
    """`decode` of a profile key ("file", line, "decode" or "<method 'x' of 'y'>")."""
    name = key[2]
    if name.startswith("<method '"):
        name = name.split("'")[1]
    elif name.startswith("<built-in method "):
        name = name.removeprefix("<built-in method ").rstrip(">")
    return name.split(".")[-1]


def _cumulative(stats: dict, names: tuple[str, ...], all_names: set[str]) -> float:
    """Cumulative seconds of the functions called `names`, counting only the calls made
    outside every step function (PIL's thumbnail inside decode is decode's time)."""
    inside: dict[tuple, bool] = {}

    def under_a_step(key: tuple, seen: frozenset = frozenset()) -> bool:
        """Whether a step function is among key's callers, transitively."""
        if key in inside:
            return inside[key]
        callers = stats.get(key, (0, 0, 0, 0, {}))[4]
        found = any(_name(c) in all_names or (c not in seen and under_a_step(c, seen | {key}))
                    for c in callers)
        inside[key] = found
        return found

    total = 0.0
    for key, (_, _, _, _, callers) in stats.items():
        if _name(key) in names:
            total += sum(v[3] for c, v in callers.items()
                         if _name(c) not in all_names and not under_a_step(c))
    return total


def workers_curve(folder: Path, counts: list[int], fv: bool) -> dict[int, float]:
    """Seconds of `npimage run` end to end on `folder` with each number of workers."""
    return {n: npimage_run(folder, fv, n)[0] for n in counts}


def upscaled(paths: list[Path], folder: Path, side: int = 1600) -> list[Path]:
    """Copies of `paths` resized so that their long side is `side` px (JPEG q90)."""
    out = []
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            scale = side / max(img.size)
            big = img.convert("RGB").resize((round(img.width * scale),
                                             round(img.height * scale)), Image.Resampling.LANCZOS)
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
    """Every tool on one folder; a dict of images/s and ratios, npimage's stages and steps."""
    paths = sorted(folder.iterdir())
    n = len(paths)
    for p in paths:
        p.read_bytes()  # warm the page cache for everyone
    if not args.no_warm_up:  # Numba's cache of this checkout and CPU: compiled once, untimed
        for with_fv in (False,) if args.no_fv else (False, True):
            npimage_run(folder, with_fv, args.workers)
    rounds = [one_round(folder, paths, args) for _ in range(args.repeat)]
    seconds = {k: statistics.median(r[0][k] for r in rounds) for k in rounds[0][0]
               if all(k in r[0] for r in rounds)}
    stages, cpu = _median_round(rounds, seconds)
    rates = {k: n / v for k, v in seconds.items()}
    print(f"\n### {name}: {n} images" + (f" (median of {args.repeat} rounds, every tool "
                                          "once a round)" if args.repeat > 1 else "") + "\n")
    print("| tool | seconds | images/s | npimage hashes-only ÷ it | npimage FV ÷ it |")
    print("|---|---|---|---|---|")
    for k, v in seconds.items():
        ours = rates["npimage hashes only"] / rates[k]
        fv = rates.get("npimage with FV", 0) / rates[k]
        print(f"| {k} | {v:.1f} | {rates[k]:.0f} | {ours:.2f}x | {fv:.2f}x |")
    print_stages(stages)
    print("\n| npimage run | CPU s (run + workers) | CPU ms / image |\n|---|---|---|")
    for k, v in cpu.items():
        print(f"| {k} | {v:.1f} | {v / n * 1000:.1f} |")
    steps = step_seconds(paths[: args.sample], not args.no_fv,
                         time.process_time if args.cpu_steps else time.perf_counter)
    print(f"\n| npimage signature step (real code path, 1 process, {min(n, args.sample)} "
          f"images) | ms / image{' (CPU)' if args.cpu_steps else ''} |")
    print("|---|---|")
    for k, v in steps.items():
        print(f"| {k} | {v * 1000:.2f} |")
    curve = {}
    if args.workers_curve:
        curve = workers_curve(folder, args.workers_curve, False)
        print("\n| npimage hashes only, workers | seconds | images/s | speed-up over 1st |")
        print("|---|---|---|---|")
        first = curve[args.workers_curve[0]]
        for w, v in curve.items():
            print(f"| {w} | {v:.1f} | {n / v:.0f} | {first / v:.2f}x |")
    return {"set": name, "images": n, "rounds": args.repeat, "seconds": seconds,
            "images_per_s": rates,
            "stage_seconds": stages, "cpu_seconds": cpu,
            "step_ms": {k: v * 1000 for k, v in steps.items()},
            "workers_curve": {str(w): n / v for w, v in curve.items()}}


Round = tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]


def one_round(folder: Path, paths: list[Path], args: argparse.Namespace) -> Round:
    """Every tool once on `folder` (its files: `paths`), one after the other: (seconds per
    tool, npimage's stage seconds per run, npimage's CPU seconds per run). Rounds are
    repeated (--repeat) so that a shared machine's drift, which moves every tool, does not
    decide a ratio."""
    seconds = {"POC loop": poc_loop(paths)}
    if not args.no_peers:
        for peer in PEERS:
            got = peer_seconds(peer, folder, args.peers_dir)
            if got is not None:
                seconds[peer] = got
    stages, cpu = {}, {}
    seconds["npimage hashes only"], stages["hashes only"], cpu["hashes only"] = npimage_run(
        folder, False, args.workers)
    if args.codes:
        seconds["npimage hashes + codes"], stages["hashes + codes"], cpu["hashes + codes"] = \
            npimage_run(folder, False, args.workers, codes=True)
    if not args.no_fv:
        seconds["npimage with FV"], stages["with FV"], cpu["with FV"] = npimage_run(
            folder, True, args.workers)
    return seconds, stages, cpu


def _median_round(rounds: list[Round], seconds: dict[str, float]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The stage and CPU tables of the round whose npimage hashes-only time is the median's
    (a real run's stages, which add up, rather than medians of each stage)."""
    target = seconds["npimage hashes only"]
    best = min(rounds, key=lambda r: abs(r[0]["npimage hashes only"] - target))
    return best[1], best[2]


def print_stages(stages: dict[str, dict[str, float]]) -> None:
    """Seconds per stage of each `npimage run` (its --timings): where the run's time goes."""
    names = [s for s in next(iter(stages.values()))]
    print("\n| npimage stage (seconds) | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    for stage in names:
        print(f"| {stage} | " + " | ".join(f"{run.get(stage, 0):.2f}" for run in
                                            stages.values()) + " |")
    print("| sum of stages | " + " | ".join(f"{sum(run.values()):.2f}" for run in
                                           stages.values()) + " |")


def main(argv: list[str] | None = None) -> int:
    """Build the two photo sets, time every tool on each, print tables and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=2000, help="~350 px photos (default 2000)")
    ap.add_argument("--large", type=int, default=300, help="~1600 px photos (default 300)")
    ap.add_argument("--sample", type=int, default=256, help="images in the per-step table")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every tool, one after the other; the tables show each "
                         "tool's median (a shared machine's speed drifts between runs)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-fv", action="store_true", help="skip the FV rows")
    ap.add_argument("--no-peers", action="store_true", help="skip imagededup and fastdup")
    ap.add_argument("--cpu-steps", action="store_true",
                    help="per-step table in CPU seconds (steadier on a loaded machine)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="time npimage's first runs too: with a cold Numba cache (a new "
                         "checkout, a changed kernel file, another CPU) they compile its "
                         "kernels, ~1 s for compare's and ~10 s for verify's")
    ap.add_argument("--codes", action="store_true",
                    help="also time `npimage run` with barcode reading (its default)")
    ap.add_argument("--workers-curve", type=int, nargs="*", default=None,
                    help="numbers of workers to time npimage hashes-only end to end with "
                         "(default: 1, 2, 4, ... up to the cores; none: no curve)")
    ap.add_argument("--model-cache", type=Path, default=REPO / "data" / "models",
                    help="FV model weights, kept between runs (NPIMAGE_MODEL_CACHE)")
    ap.add_argument("--peers-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "npimage-bench-peers",
                    help="where the peers' throwaway virtualenvs live")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not GROCERY.is_dir():
        print(f"dataset not found: {GROCERY} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    if args.workers_curve is None:
        args.workers_curve = _default_curve(len(os.sched_getaffinity(0)))
    os.environ.setdefault("NPIMAGE_MODEL_CACHE", str(args.model_cache))  # also for runs
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


def _default_curve(cores: int) -> list[int]:
    """1, 2, 4, ... and the number of cores."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return [*counts, cores]


if __name__ == "__main__":
    sys.exit(main())
