"""Pack-reading quality against a reading truth file (the demo writes reading_truth.csv).

Truth columns: image_id, printed_gtin (GTIN-14 of the code the picture prints, '' for
none), symbology, reference_gtin, gtin_mismatch (1: the printed GTIN is not the
reference's), injected (1: a pack printed with a wrong code), strength (the dosage the
picture prints, '' for none). Measured from the warehouse of a published run:

- codes: per symbology, codes printed / read exactly (the image's GTINs are exactly the
  printed one) / missed; wrong GTINs = images whose GTINs include one not printed;
- strengths: pictures printing a strength / read exactly (every quantity of the printed
  strength found among the quantities read on the picture: value, unit, per);
- catalogue check: mismatches expected / listed in catalogue_gtin_mismatch / missed /
  false alarms (listed but not a mismatch), injected ones apart.
Only images the run read count (OCR may be capped or limited to close pairs).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npimage.reading.packs import quantities_of_json
from npimage.reading.quantities import Quantity, parse_quantities
from npimage.storage.warehouse import connect_readonly


@dataclass
class ReadingEvaluation:
    """Counts of one reading evaluation (see the module docstring)."""

    codes: dict[str, dict[str, int]] = field(default_factory=dict)
    wrong_gtins: int = 0
    wrong_rows: list[tuple[str, str, str]] = field(default_factory=list)
    strengths: dict[str, int] = field(default_factory=dict)
    strength_misses: list[tuple[str, str, str]] = field(default_factory=list)
    mismatches: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def load_reading_truth(path: Path) -> dict[str, dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return {r["image_id"]: r for r in csv.DictReader(fh)}


def _key(q: Quantity) -> tuple:
    return (*q.base, q.per)


def strength_read(printed: str, quantities: list) -> bool:
    """Whether every quantity of the printed strength is among the quantities read."""
    want = parse_quantities(printed)
    have = {_key(q) for q in quantities}
    return bool(want) and all(_key(q) in have for q in want)


def evaluate_reading(warehouse: Path, client_id: str,
                     truth: dict[str, dict[str, str]]) -> ReadingEvaluation:
    """Compare the client's published image_codes, image_text and catalogue check with truth."""
    con = connect_readonly(warehouse)
    try:
        read_codes = {r[0] for r in con.execute(
            "SELECT image_id FROM image_reads WHERE client_id = ? AND reader = 'codes'",
            [client_id]).fetchall()}
        read_text = {r[0] for r in con.execute(
            "SELECT image_id FROM image_reads WHERE client_id = ? AND reader = 'text'",
            [client_id]).fetchall()}
        gtins: dict[str, set[str]] = defaultdict(set)
        for image_id, gtin in con.execute(
                "SELECT image_id, gtin FROM image_codes WHERE client_id = ? AND gtin IS NOT NULL",
                [client_id]).fetchall():
            gtins[image_id].add(gtin)
        quantities: dict[str, list] = defaultdict(list)
        for image_id, js in con.execute(
                "SELECT image_id, quantities FROM image_text WHERE client_id = ?",
                [client_id]).fetchall():
            quantities[image_id].extend(quantities_of_json(js))
        listed = {r[0] for r in con.execute(
            "SELECT image_id FROM catalogue_gtin_mismatch WHERE client_id = ?",
            [client_id]).fetchall()}
    finally:
        con.close()
    ev = ReadingEvaluation()
    codes: dict[str, dict[str, int]] = defaultdict(lambda: {"printed": 0, "read": 0,
                                                            "missed": 0})
    for image_id, t in truth.items():
        if image_id not in read_codes:
            continue
        got = gtins.get(image_id, set())
        printed = t["printed_gtin"]
        if got - {printed}:
            ev.wrong_gtins += 1
            ev.wrong_rows.append((image_id, printed, ",".join(sorted(got))))
        if printed:
            c = codes[t["symbology"]]
            c["printed"] += 1
            c["read" if got == {printed} else "missed"] += 1
    ev.codes = dict(codes)
    s = {"printed": 0, "read": 0}
    for image_id, t in truth.items():
        if t["strength"] and image_id in read_text and parse_quantities(t["strength"]):
            s["printed"] += 1
            if strength_read(t["strength"], quantities.get(image_id, [])):
                s["read"] += 1
            else:
                found = "; ".join(str(q) for q in quantities.get(image_id, []))
                ev.strength_misses.append((image_id, t["strength"], found))
    ev.strengths = s
    expected = {i for i, t in truth.items() if t["gtin_mismatch"] == "1" and i in read_codes}
    injected = {i for i, t in truth.items() if t["injected"] == "1" and i in read_codes}
    ev.mismatches = {"expected": len(expected), "listed": len(listed & expected),
                     "missed": len(expected - listed), "false_alarms": len(listed - expected),
                     "injected": len(injected), "injected_listed": len(injected & listed)}
    return ev


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f} %" if b else "-"


def format_reading(ev: ReadingEvaluation) -> str:
    """Markdown-ish tables of a reading evaluation."""
    out = ["pack reading: codes", "  symbology   printed   read exactly   missed"]
    for sym, c in sorted(ev.codes.items()):
        share = _pct(c["read"], c["printed"])
        out.append(f"  {sym:<11} {c['printed']:>7}   {c['read']:>5} {share:>8}"
                   f"   {c['missed']:>6}")
    out.append(f"  wrong GTINs {ev.wrong_gtins}")
    s = ev.strengths
    out.append(f"pack reading: printed strengths read exactly  {s.get('read', 0)} / "
               f"{s.get('printed', 0)}  ({_pct(s.get('read', 0), s.get('printed', 0))})")
    m = ev.mismatches
    out.append(f"catalogue check: mismatches listed {m['listed']} / {m['expected']}, "
               f"missed {m['missed']}, false alarms {m['false_alarms']}; injected listed "
               f"{m['injected_listed']} / {m['injected']}")
    return "\n".join(out)
