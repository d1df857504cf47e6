"""`npimage` command line: run the pipeline without a scheduler, build the demo, render reports.

    npimage run --client C --source PATH [--data-dir D] [--no-fv] [--top-k 10]
                [--threshold 0.82] [--mode full|incremental] [--backend postgresql://...]
    npimage demo [--airflow] [--products N] [--no-fv]
    npimage report --client C [--data-dir D]
    npimage evaluate --client C --truth FILE [--data-dir D]
    npimage fit-weights --client C --truth FILE [--out weights.json] [--data-dir D] [--step 0.05]
    npimage nearest IMAGE --client C [--data-dir D] [--top-k 10] [--threshold T]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npimage.bands import LABELS, WEAK
from npimage.config import Settings
from npimage.errors import UserError
from npimage.storage.locks import RunInProgress
from npimage.storage.runs import MODES, new_run_id

log = logging.getLogger("npimage")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where runs, the warehouse and reports go (default: data/)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--no-fv", action="store_true", help="hashes only: faster, less recall")
    p.add_argument("--fv-model", help="TF Hub handle/URL, SavedModel folder or efficientnet-lite0")
    p.add_argument("--top-k", type=int, help="nearest images kept per image (default 10)")
    p.add_argument("--threshold", type=float,
                   help="lowest score kept (default 0.82, the lowest band; pairs kept "
                        "below 0.82 are labelled 'weak')")
    p.add_argument("--weights", help="JSON weights file (npimage fit-weights writes one)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npimage", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="deduplicate one client's images")
    run.add_argument("--client", required=True, help="client id (partitions every table)")
    run.add_argument("--source", required=True,
                     help="folder of images, manifest CSV, or postgresql:// NextPage backend")
    run.add_argument("--mode", choices=MODES, default="full",
                     help="incremental: only new or changed images are recomputed")
    run.add_argument("--backend", help="postgresql:// URL to load the match tables into")
    run.add_argument("--no-report", action="store_true", help="skip the HTML report")
    _run_args(run)

    demo = sub.add_parser("demo", help="build the demo catalogue and deduplicate it")
    demo.add_argument("--airflow", action="store_true",
                      help="run the real Airflow DAG (airflow dags test) instead of in-process")
    demo.add_argument("--products", type=int, default=160)
    demo.add_argument("--variant-families", type=int, default=12,
                      help="families of packshots on white (one template, another strength, "
                      "barcode, name or colour) with edits of each; 0: none")
    demo.add_argument("--client", default="demo")
    _run_args(demo)

    ev = sub.add_parser("evaluate", help="precision/recall of a published run against truth")
    ev.add_argument("--client", required=True)
    ev.add_argument("--truth", required=True,
                    help="CSV: image_id,match_image_id,label (pairs) or image_id,group_id (groups)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _common(ev)

    fit = sub.add_parser("fit-weights",
                         help="fit the score's weights and curves on a published run and truth")
    fit.add_argument("--client", required=True)
    fit.add_argument("--truth", required=True,
                     help="CSV: image_id,group_id[,source,kind,expected_band,product,query] "
                          "or image_id,match_image_id,label (see docs/QUALITY.md)")
    fit.add_argument("--out", default="weights.json",
                     help="weights file to write (read by --weights / NPIMAGE_WEIGHTS)")
    fit.add_argument("--step", type=float, default=0.05, help="grid step of the weight search")
    _common(fit)

    rep = sub.add_parser("report", help="render the HTML review report from the warehouse")
    rep.add_argument("--client", required=True)
    _common(rep)

    near = sub.add_parser("nearest", help="the nearest images of one picture in a client's "
                                          "last published run, with scores and components")
    near.add_argument("image", help="path or fsspec URL of the picture")
    near.add_argument("--client", required=True)
    near.add_argument("--top-k", type=int, default=10, help="images shown (default 10)")
    near.add_argument("--threshold", type=float,
                      help="lowest score shown (default: the run's threshold)")
    _common(near)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings().with_overrides(
        data_dir=args.data_dir, fv=False if getattr(args, "no_fv", False) else None,
        fv_model=getattr(args, "fv_model", None), top_k=getattr(args, "top_k", None),
        threshold=getattr(args, "threshold", None), weights_file=getattr(args, "weights", None))


def print_summary(info: dict[str, Any]) -> None:
    """Human-readable end of a run: counts per band and where the results are."""
    print(f"\nclient {info['client_id']}  run {info['run_id']}")
    print(f"  images            {info['images']}")
    print(f"  rejects           {info['rejects']}")
    if "signatures_computed" in info:
        print(f"  signatures        {info['signatures_computed']} computed, "
              f"{info.get('signatures_reused', 0)} reused")
    for label, key in (("image pairs", "image_pairs_by_band"),
                       ("product pairs", "product_pairs_by_band")):
        counts = info[key]
        text = "  ".join(f"{name} {counts.get(name, 0)}" for name in LABELS
                         if name != WEAK or counts.get(name))
        print(f"  {label:<17} {sum(counts.values())}  ({text})")
    print(f"  warehouse         {info['warehouse']}")
    print(f"  run files         {info['run_dir']}")
    if info.get("report"):
        print(f"  report            {info['report']}")
    if info.get("report_error"):
        print(f"  report FAILED     {info['report_error']}")


def cmd_run(args: argparse.Namespace) -> int:
    from npimage.pipeline import settings_context  # lazy: keeps `--help` fast
    from npimage.runner import run_pipeline

    settings = _settings(args)
    ctx = settings_context(args.client, args.source, new_run_id(), settings, mode=args.mode,
                           backend=args.backend)
    info = run_pipeline(ctx, workers=args.workers, report=not args.no_report)
    print_summary(info)
    return 0


def _airflow_env(project: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(project / "airflow_home"))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(project / "dags")
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(project / "plugins")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["NPIMAGE_DATA_DIR"] = str(data_dir.resolve())
    return env


def run_dag(conf: dict[str, Any], data_dir: Path) -> None:
    """Run the npimage_dedup DAG for real with `airflow dags test` (SQLite metadata)."""
    project = Path(__file__).resolve().parents[2]
    env = _airflow_env(project, data_dir)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([airflow, "dags", "test", "npimage_dedup", "--conf", json.dumps(conf)],
                   env=env, check=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from npimage_demo.catalogue import build_demo_catalogue

    from npimage.quality.evaluate import planted_found

    settings = _settings(args)
    data_dir = settings.data_dir
    demo = build_demo_catalogue(data_dir / "demo_catalogue", n_products=args.products,
                                variant_families=args.variant_families)
    print(f"demo catalogue: {demo.n_images} images, {demo.n_planted} planted duplicates "
          f"-> {demo.manifest}")
    if args.airflow:
        conf = {"client_id": args.client, "source": str(demo.manifest.resolve()),
                "mode": "full", "fv": settings.fv, "top_k": settings.top_k,
                "threshold": settings.threshold}
        run_dag(conf, data_dir)
        info = _published_summary(settings, args.client)
    else:
        from npimage.pipeline import settings_context
        from npimage.runner import run_pipeline

        ctx = settings_context(args.client, str(demo.manifest), new_run_id(), settings)
        info = run_pipeline(ctx, workers=args.workers)
    print_summary(info)
    print("\nplanted duplicates (pair original <-> copy found in both directions):")
    print(f"  {'kind':<12}{'planted':>8}{'found':>8}{'in band':>9}")
    total = [0, 0, 0]
    for r in planted_found(settings.warehouse_path, args.client, demo.truth):
        print(f"  {r.kind:<12}{r.total:>8}{r.found:>8}{r.in_band:>9}")
        total = [total[0] + r.total, total[1] + r.found, total[2] + r.in_band]
    print(f"  {'all':<12}{total[0]:>8}{total[1]:>8}{total[2]:>9}")
    return 0


def _published_summary(settings: Settings, client_id: str) -> dict[str, Any]:
    """The summary.json of the client's last published run (written by publish)."""
    from npimage.storage.runs import safe_name

    client_dir = settings.data_dir / "clients" / safe_name(client_id)
    run_id = json.loads((client_dir / "current.json").read_text())["run_id"]
    info = json.loads((client_dir / "runs" / safe_name(run_id) / "summary.json").read_text())
    report = settings.data_dir / "reports" / safe_name(client_id) / "index.html"
    if report.exists():
        info["report"] = str(report.resolve())
    return info


def cmd_report(args: argparse.Namespace) -> int:
    from npimage.report import render_report
    from npimage.storage.runs import safe_name

    settings = _settings(args)
    out = settings.data_dir / "reports" / safe_name(args.client)
    path = render_report(settings.warehouse_path, args.client, out)
    print(f"report: {Path(path).resolve()}")
    return 0


def cmd_fit_weights(args: argparse.Namespace) -> int:
    from npimage.quality.fitting import FitOptions, fit_weights, format_metrics

    if not 0 < args.step <= 0.5 or abs(round(1 / args.step) * args.step - 1) > 1e-9:
        raise ValueError("--step must divide 1 (0.05, 0.1, 0.25...)")
    settings = _settings(args)
    result = fit_weights(settings.data_dir, args.client, Path(args.truth),
                         FitOptions(step=args.step))
    out = Path(args.out)
    out.write_text(result.to_json(), encoding="utf-8")
    print(format_metrics(result.metrics))
    print(f"weights: {result.document()['weights']}; written to {out.resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from npimage.quality.evaluate import (
        by_kind,
        evaluate,
        format_by_kind,
        format_evaluation,
        load_truth,
    )

    settings = _settings(args)
    result = evaluate(settings.warehouse_path, args.client, load_truth(Path(args.truth)))
    kinds = by_kind(settings.warehouse_path, args.client, Path(args.truth))
    if args.json:
        print(json.dumps({**result.as_dict(), "by_kind": [asdict(k) for k in kinds]}, indent=2))
    else:
        print(format_evaluation(result))
        if kinds:
            print(format_by_kind(kinds))
    return 0


def cmd_nearest(args: argparse.Namespace) -> int:
    from npimage.matching.nearest import format_result, nearest

    result = nearest(args.image, args.client, data_dir=_settings(args).data_dir,
                     top_k=args.top_k, threshold=args.threshold)
    print(format_result(result))
    return 0


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "report": cmd_report, "evaluate": cmd_evaluate,
            "nearest": cmd_nearest,
            "fit-weights": cmd_fit_weights}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"npimage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, ValueError) as exc:
        print(f"npimage: error: {exc}", file=sys.stderr)
        return 2
    except RunInProgress as exc:  # refused before writing anything: try again later
        print(f"npimage: refused: {exc}", file=sys.stderr)
        return 3
    except subprocess.CalledProcessError as exc:
        print(f"npimage: error: {Path(exc.cmd[0]).name} {' '.join(exc.cmd[1:3])} failed "
              f"(exit {exc.returncode}); its log above says which task failed and why",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
