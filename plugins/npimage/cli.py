"""`npimage` command line: run the pipeline without a scheduler, build the demo, render reports.

    npimage run --client C --source PATH [--data-dir D] [--no-fv] [--top-k 10]
                [--threshold 0.82] [--mode full|incremental] [--backend postgresql://...]
                [--workers N] [--timings]
    npimage demo [--airflow] [--products N] [--no-fv]
    npimage report --client C [--data-dir D]
    npimage evaluate --client C --truth FILE [--data-dir D]
    npimage evaluate --client C --families | --grocery DIR   (family prediction, #18)
    npimage fit-weights --client C [--truth FILE] [--from-decisions] [--out weights.json]
                        [--data-dir D] [--step 0.05]
    npimage nearest IMAGE --client C [--data-dir D] [--top-k 10] [--threshold T]
    npimage review --client C [--host 127.0.0.1] [--port 8765] [--token T] [--backend URL]
    npimage --version

A problem you can fix is reported in one line (what went wrong, what to do) with a
non-zero exit code; see `main`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import npimage
from npimage.bands import LABELS, WEAK
from npimage.config import Settings
from npimage.errors import InputError, UserError
from npimage.redact import RedactingFilter, redact_dsn
from npimage.storage.locks import RunInProgress
from npimage.storage.runs import MODES, new_run_id

log = logging.getLogger("npimage")


CLIENT_HELP = ("client id: partitions every table and names the client's folder in the "
               "data dir")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest flag or sub-command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_with_suggestion(self, message)} "
                     f"(see {self.prog} --help)\n")


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser and of its sub-commands."""
    out = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _flags(sub)
    return out


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices]


def _with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """`message` with "did you mean ...?" for a mistyped flag or sub-command (difflib)."""
    words: list[str] = []
    candidates: list[str] = []
    if message.startswith("unrecognized arguments: "):
        words = [w.split("=")[0] for w in message.removeprefix("unrecognized arguments: ").split()
                 if w.startswith("-")]
        candidates = _flags(parser)
    elif (m := re.search(r"invalid choice: '([^']*)'", message)) and _commands(parser):
        words, candidates = [m.group(1)], _commands(parser)
    hints = [close[0] for w in words
             if (close := difflib.get_close_matches(w, candidates, n=1, cutoff=0.6))]
    if hints:
        return f"{message}; did you mean {' '.join(hints)}?"
    return message


def _client(p: argparse.ArgumentParser, required: bool = True, default: str | None = None
            ) -> None:
    p.add_argument("--client", required=required, default=default,
                   help=CLIENT_HELP + (f" (default: {default})" if default else ""))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where runs, the warehouse and reports go (default: data/, "
                                      "or NPIMAGE_DATA_DIR)")


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
    p.add_argument("--read", help="pack readers: codes, text (OCR of images in close pairs), "
                   "text-all, comma-separated, or none (default: codes)")
    p.add_argument("--text-max", type=int, help="OCR at most N images this run (default: no cap)")
    p.add_argument("--no-families", action="store_true",
                   help="skip the family stage (on by default when families are known and "
                        "FV is on: a manifest `family` column or np_product.family)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="npimage", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"npimage {npimage.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="deduplicate one client's images")
    _client(run)
    run.add_argument("--source", required=True,
                     help="folder of images, manifest CSV, or postgresql:// NextPage backend")
    run.add_argument("--mode", choices=MODES, default="full",
                     help="incremental: only new or changed images are recomputed")
    run.add_argument("--backend", help="postgresql:// URL to load the match tables into")
    run.add_argument("--no-report", action="store_true", help="skip the HTML report")
    run.add_argument("--timings", action="store_true",
                     help="print the wall time of each stage after the summary")
    run.add_argument("--allow-shrink", action="store_true",
                     help="publish even if most of the last published images disappeared "
                          "(an emptied catalogue); refused by default")
    run.add_argument("--max-shrink", type=float, default=0.5,
                     help="largest share of the last published images that may disappear "
                          "or become unreadable before the run is refused (default 0.5)")
    _run_args(run)

    demo = sub.add_parser("demo", help="build the demo catalogue and deduplicate it "
                                       "(needs the demo extra: pip install 'npimage[demo]')")
    demo.add_argument("--airflow", action="store_true",
                      help="run the real Airflow DAG (airflow dags test) instead of in-process")
    demo.add_argument("--products", type=int, default=160, help="products drawn (default 160)")
    demo.add_argument("--variant-families", type=int, default=12,
                      help="families of packshots on white (one template, another strength, "
                      "barcode, name or colour) with edits of each; 0: none")
    _client(demo, required=False, default="demo")
    _run_args(demo)

    ev = sub.add_parser("evaluate", help="precision/recall of a published run against truth")
    _client(ev, required=False)
    ev.add_argument("--truth",
                    help="CSV: image_id,match_image_id,label (pairs) or image_id,group_id (groups)")
    ev.add_argument("--families", action="store_true",
                    help="also (or only) the client's family predictions: top-1/top-3 "
                         "against its families, leave-one-product-out (docs/QUALITY.md)")
    ev.add_argument("--grocery", metavar="DIR",
                    help="evaluate family prediction on the grocery-store photos under DIR "
                         "(e.g. ../shared/datasets/grocery-store); no run needed")
    ev.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _common(ev)

    fit = sub.add_parser("fit-weights",
                         help="fit the score's weights and curves on a published run and truth")
    _client(fit)
    fit.add_argument("--truth",
                     help="CSV: image_id,group_id[,source,kind,expected_band,product,query] "
                          "or image_id,match_image_id,label (see docs/QUALITY.md)")
    fit.add_argument("--out", default="weights.json",
                     help="weights file to write (read by --weights / NPIMAGE_WEIGHTS)")
    fit.add_argument("--step", type=float, default=0.05, help="grid step of the weight search")
    fit.add_argument("--from-decisions", action="store_true",
                     help="label pairs with the reviewers' decisions (merge/keep = the band "
                          "confirmed, not the same = different), added to --truth if given")
    _common(fit)

    rep = sub.add_parser("report", help="render the HTML review report from the warehouse")
    _client(rep)
    _common(rep)

    near = sub.add_parser("nearest", help="the nearest images of one picture in a client's "
                                          "last published run, with scores and components")
    near.add_argument("image", help="path or fsspec URL of the picture")
    _client(near)
    near.add_argument("--top-k", type=int, default=10, help="images shown (default 10)")
    near.add_argument("--threshold", type=float,
                      help="lowest score shown (default: the run's threshold)")
    _common(near)

    rev = sub.add_parser("review", help="serve the review application (decide on pairs)")
    _client(rev)
    rev.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; any other needs a token)")
    rev.add_argument("--port", type=int, default=8765)
    rev.add_argument("--token", default=os.environ.get("NPIMAGE_REVIEW_TOKEN"),
                     help="shared secret required by every request (NPIMAGE_REVIEW_TOKEN)")
    rev.add_argument("--user", default=os.environ.get("NPIMAGE_REVIEW_USER"),
                     help="name recorded with decisions (default: the OS user)")
    rev.add_argument("--backend", default=os.environ.get("NPIMAGE_REVIEW_BACKEND"),
                     help="postgresql:// URL: decisions also go to npimage_decision")
    _common(rev)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings().with_overrides(
        data_dir=args.data_dir, fv=False if getattr(args, "no_fv", False) else None,
        fv_model=getattr(args, "fv_model", None), top_k=getattr(args, "top_k", None),
        threshold=getattr(args, "threshold", None), weights_file=getattr(args, "weights", None),
        read=getattr(args, "read", None), text_max=getattr(args, "text_max", None),
        families=False if getattr(args, "no_families", False) else None)


def print_summary(info: dict[str, Any]) -> None:
    """Human-readable end of a run: what was computed, found, stored and loaded, and where."""
    print(f"\nclient {info['client_id']}  run {info['run_id']}")
    print(f"  images            {info['images']}")
    print(f"  rejects           {info['rejects']}")
    if "signatures_computed" in info:
        print(f"  signatures        {info['signatures_computed']} computed, "
              f"{info.get('signatures_reused', 0)} reused (bytes unchanged since the last run)"
              + (f", {info['signatures_resumed']} resumed from an interrupted run"
                 if info.get("signatures_resumed") else ""))
    for label, key in (("image pairs", "image_pairs_by_band"),
                       ("product pairs", "product_pairs_by_band")):
        counts = info[key]
        text = "  ".join(f"{name} {counts.get(name, 0)}" for name in LABELS
                         if name != WEAK or counts.get(name))
        print(f"  {label:<17} {sum(counts.values())}  ({text})")
    rows = info.get("image_match_rows")
    print("                    pairs are counted once; the tables hold both directions"
          + (f" ({rows} image_matches rows)" if rows is not None else ""))
    if info.get("postgresql"):
        pg = info["postgresql"]
        print(f"  postgresql        {pg['image_match_rows']} image-match and "
              f"{pg['product_match_rows']} product-match rows loaded into {pg['database']}")
    if info.get("reading"):
        r = info["reading"]
        print(f"  pack reading      {r.get('image_codes', 0)} codes, "
              f"{r.get('image_text', 0)} text lines")
    if info.get("family_predictions"):
        print(f"  families          {info['family_predictions']} products predicted, "
              f"{info.get('possibly_misfiled', 0)} possibly misfiled")
    print(f"  warehouse         {info['warehouse']}")
    print(f"  run files         {info['run_dir']}")
    if info.get("report"):
        print(f"  report            {info['report']}")
    if info.get("report_error"):
        print(f"  report FAILED     {info['report_error']}")


def cmd_run(args: argparse.Namespace) -> int:
    from npimage.runner import run_pipeline, start_workers

    pool = start_workers(args.workers)  # they load the library while this process does
    try:
        from npimage.pipeline import settings_context  # lazy: keeps `--help` fast

        settings = _settings(args)
        ctx = settings_context(args.client, args.source, new_run_id(), settings,
                               mode=args.mode, backend=args.backend,
                               allow_shrink=args.allow_shrink, max_shrink=args.max_shrink)
    except BaseException:
        pool.kill()
        raise
    info = run_pipeline(ctx, report=not args.no_report, pool=pool)
    print_summary(info)
    if args.timings:
        print_timings(info.get("stage_seconds", {}))
    return 0


def print_timings(seconds: dict[str, float]) -> None:
    """Wall seconds per stage (`npimage run --timings`): where a run's time goes."""
    print("\n  stage             seconds")
    for name, value in seconds.items():
        print(f"  {name:<17} {value:7.2f}")
    print(f"  {'total':<17} {sum(seconds.values()):7.2f}")


def cmd_demo(args: argparse.Namespace) -> int:
    from npimage_demo.catalogue import build_demo_catalogue

    from npimage.quality.evaluate import planted_found
    from npimage.storage.layout import Layout
    from npimage.storage.store import is_remote, scratch_dir, upload_tree

    settings = _settings(args)
    data_dir = settings.data_dir
    target = Layout.of(data_dir).demo_dir
    local = scratch_dir() / "demo_catalogue" if is_remote(target) else Path(target)
    demo = build_demo_catalogue(local, n_products=args.products,
                                variant_families=args.variant_families)
    source = str(demo.manifest.resolve())
    if is_remote(target):  # every worker must read it: the demo goes beside the data dir
        upload_tree(local, target)
        source = f"{target}/{demo.manifest.name}"
    print(f"demo catalogue: {demo.n_images} images, {demo.n_planted} planted duplicates "
          f"-> {source}")
    if args.airflow:
        conf = {"client_id": args.client, "source": source,
                "mode": "full", "fv": settings.fv, "top_k": settings.top_k,
                "threshold": settings.threshold, "read": settings.read,
                "text_max": settings.text_max}
        from npimage.orchestration.local import run_dag

        run_dag(conf, data_dir)
        info = _published_summary(settings, args.client)
    else:
        from npimage.pipeline import settings_context
        from npimage.runner import run_pipeline

        ctx = settings_context(args.client, source, new_run_id(), settings)
        info = run_pipeline(ctx, workers=args.workers)
    print_summary(info)
    print("\nplanted duplicates (pair original <-> copy found in both directions):")
    print(f"  {'kind':<12}{'planted':>8}{'found':>8}{'in band':>9}")
    total = [0, 0, 0]
    for r in planted_found(settings.warehouse_path, args.client, demo.truth):
        print(f"  {r.kind:<12}{r.total:>8}{r.found:>8}{r.in_band:>9}")
        total = [total[0] + r.total, total[1] + r.found, total[2] + r.in_band]
    print(f"  {'all':<12}{total[0]:>8}{total[1]:>8}{total[2]:>9}")
    _print_reading(settings, args.client, demo.truth.with_name("reading_truth.csv"))
    return 0


def _print_reading(settings: Settings, client_id: str, reading_truth: Path) -> None:
    """Pack reading against the demo's reading truth (codes, strengths, catalogue check)."""
    from npimage.quality.reading_eval import evaluate_reading, format_reading, load_reading_truth

    if reading_truth.is_file():
        ev = evaluate_reading(settings.warehouse_path, client_id,
                              load_reading_truth(reading_truth))
        print()
        print(format_reading(ev))


def _published_summary(settings: Settings, client_id: str) -> dict[str, Any]:
    """The summary.json of the client's last published run (written by publish)."""
    from npimage.storage.layout import Layout

    layout = Layout.of(settings.data_dir)
    run_dir = layout.published_run_dir(client_id)
    if run_dir is None:
        raise RuntimeError(f"the DAG run published nothing for client {client_id!r}")
    info = json.loads((run_dir / "summary.json").read_text())
    report = layout.report_dir(client_id) / "index.html"
    if report.exists():
        info["report"] = str(report)
    return info


def cmd_report(args: argparse.Namespace) -> int:
    from npimage.report import render_report
    from npimage.storage.layout import Layout
    from npimage.storage.store import is_remote, local_output_dir

    settings = _settings(args)
    out = Layout.of(settings.data_dir).report_dir(args.client)
    with local_output_dir(out) as local:
        render_report(settings.data_dir, args.client, local)
    shown = out if is_remote(out) else Path(out).resolve()
    print(f"report: {shown / 'index.html'}")
    return 0


def _decisions_truth(settings: Settings, args: argparse.Namespace, folder: Path) -> Path:
    """A pairs truth file (image_id,match_image_id,label) in `folder` from the reviewers'
    decisions, plus the rows of --truth when it is a pairs file too."""
    import csv

    from npimage.review.store import truth_pairs

    rows = truth_pairs(settings.data_dir, args.client)
    if args.truth:
        with open(args.truth, newline="", encoding="utf-8") as fh:
            given = list(csv.DictReader(fh))
        if given and not {"image_id", "match_image_id", "label"} <= set(given[0]):
            raise InputError("--from-decisions adds pairs: --truth must then be a pairs file",
                             "header image_id,match_image_id,label")
        rows += [(r["image_id"], r["match_image_id"], r["label"]) for r in given]
    if not rows:
        raise InputError(f"no decision labels a pair of client {args.client!r} yet",
                         "decide some pairs in `npimage review` first")
    out = folder / "truth.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "match_image_id", "label"])
        writer.writerows(rows)
    print(f"labelled pairs: {len(rows)} "
          f"({sum(1 for r in rows if r[2] == 'different')} not the same)")
    return out


def cmd_fit_weights(args: argparse.Namespace) -> int:
    from npimage.quality.fitting import FitOptions, fit_weights, format_metrics

    if not 0 < args.step <= 0.5 or abs(round(1 / args.step) * args.step - 1) > 1e-9:
        raise ValueError("--step must divide 1 (0.05, 0.1, 0.25...)")
    settings = _settings(args)
    if not (args.truth or args.from_decisions):
        raise InputError("fit-weights needs labelled pairs", "pass --truth FILE, "
                         "--from-decisions, or both")
    with tempfile.TemporaryDirectory(prefix="npimage-decisions-") as tmp:
        truth = (_decisions_truth(settings, args, Path(tmp)) if args.from_decisions
                 else Path(args.truth))
        result = fit_weights(settings.data_dir, args.client, truth, FitOptions(step=args.step))
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
    if args.grocery or args.families:
        return _evaluate_families(args, settings)
    if not (args.client and args.truth):
        raise ValueError("evaluate needs --client and --truth (or --families / --grocery)")
    result = evaluate(settings.warehouse_path, args.client, load_truth(Path(args.truth)))
    kinds = by_kind(settings.warehouse_path, args.client, Path(args.truth))
    if args.json:
        print(json.dumps({**result.as_dict(), "by_kind": [asdict(k) for k in kinds]}, indent=2))
    else:
        print(format_evaluation(result))
        if kinds:
            print(format_by_kind(kinds))
    reading_truth = Path(args.truth).with_name("reading_truth.csv")
    if reading_truth.is_file():  # pack reading: the demo writes it beside truth.csv
        from npimage.quality.reading_eval import (
            evaluate_reading,
            format_reading,
            load_reading_truth,
        )

        ev = evaluate_reading(settings.warehouse_path, args.client,
                              load_reading_truth(reading_truth))
        print(json.dumps(ev.as_dict(), indent=2) if args.json else "\n" + format_reading(ev))
    return 0


def _evaluate_families(args: argparse.Namespace, settings: Settings) -> int:
    """`evaluate --families` (a published run) and `evaluate --grocery DIR` (#18)."""
    from npimage.families import evaluate as fe

    out: dict[str, Any] = {}
    if args.grocery:
        cache = settings.data_dir / "cache" / "grocery_fv.npz"
        reports, model_id = fe.grocery_reports(Path(args.grocery), settings.model_cache, cache,
                                               settings.fv_model)
        out["grocery"] = [{**r.__dict__, "calibration": r.calibration.to_dict()}
                          for r in reports]
        if not args.json:
            print(fe.format_reports(reports, model_id))
    if args.families:
        if not args.client:
            raise ValueError("evaluate --families needs --client")
        got = fe.published_families(settings.warehouse_path, args.client)
        out["families"] = got.as_dict()
        if not args.json:
            print(f"families of {args.client}: {got.products} products with a family and a "
                  f"prediction, top-1 {got.top1:.3f}, top-3 {got.top3:.3f}, "
                  f"{got.misfiled} possibly misfiled, {got.unfiled_suggested} without a "
                  "family got a suggestion")
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    if args.truth and args.client:
        from npimage.quality.evaluate import evaluate, format_evaluation, load_truth

        result = evaluate(settings.warehouse_path, args.client, load_truth(Path(args.truth)))
        print(json.dumps(result.as_dict(), indent=2) if args.json else format_evaluation(result))
    return 0


def cmd_nearest(args: argparse.Namespace) -> int:
    from npimage.matching.nearest import format_result, nearest

    result = nearest(args.image, args.client, data_dir=_settings(args).data_dir,
                     top_k=args.top_k, threshold=args.threshold)
    print(format_result(result))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from npimage.review.serve import serve

    settings = _settings(args)
    return serve(settings.data_dir, args.client, host=args.host, port=args.port,
                 token=args.token, user=args.user, backend=args.backend)


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "report": cmd_report, "evaluate": cmd_evaluate,
            "nearest": cmd_nearest, "review": cmd_review,
            "fit-weights": cmd_fit_weights}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a problem the user can fix is one line on stderr, never a traceback.

    Exit codes: 0 done, 1 an unexpected error (with its traceback: a bug), 2 a usage or
    input error, 3 refused (another run of the client in flight), 4 a service
    unreachable, 130 interrupted (Ctrl-C).
    """
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        for handler in logging.getLogger().handlers:  # no DSN password in any log line
            handler.addFilter(RedactingFilter())
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("npimage: interrupted (Ctrl-C); nothing new was published, the last published "
              "run is unchanged; the same command again resumes the run", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"npimage: error: {redact_dsn(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except RunInProgress as exc:  # refused before writing anything: try again later
        print(f"npimage: refused: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError, LookupError) as exc:
        print(f"npimage: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"npimage: error: permission denied: {exc.filename or exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"npimage: error: {Path(exc.cmd[0]).name} {' '.join(exc.cmd[1:3])} failed "
              f"(exit {exc.returncode}); its log above says which task failed and why",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (KeyError quotes stripped)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
