"""The package layout holds: the core library never imports Airflow, the Airflow glue
lives in npimage.orchestration, and the backend's connection id is defined once."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys

from conftest import ROOT

import npimage


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(npimage.__path__, "npimage."))


def test_no_module_outside_orchestration_imports_airflow():
    core = [m for m in _modules() if not m.startswith("npimage.orchestration")]
    code = ("import importlib, sys; sys.path.insert(0, {!r})\n"
            "for name in {!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
            ).format(str(ROOT / "plugins"), core)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(core) > 30


def test_airflow_is_named_only_in_the_glue_and_the_dag_files():
    """Source files that import Airflow: npimage.orchestration and dags/ only."""
    pattern = re.compile(r"^\s*(from|import) airflow\b", re.MULTILINE)
    hits = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "plugins").rglob("*.py")
                  if pattern.search(p.read_text(encoding="utf-8")))
    assert hits and all(h.startswith("plugins/npimage/orchestration/") for h in hits), hits


def test_the_backend_connection_id_is_defined_once():
    literal = re.compile(r"""["']nextpage_backend["']""")
    files = sorted(str(p.relative_to(ROOT)) for folder in ("plugins", "dags")
                   for p in (ROOT / folder).rglob("*.py")
                   if literal.search(p.read_text(encoding="utf-8")))
    assert files == ["plugins/npimage/orchestration/connection.py"]
