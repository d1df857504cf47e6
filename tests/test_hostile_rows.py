"""Hostile rows of issue #13 (docs/RELIABILITY.md): each case failed the run before.

Real runs (npimage.runner / the CLI) on the small demo catalogue, real Parquet, DuckDB and
PostgreSQL; memory measured in a fresh subprocess with getrusage.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import duckdb
import pytest
from helpers import table_rows
from pg import pg_connect

import npimage
from npimage import backend
from npimage.config import Settings
from npimage.ingest.decode import ImageError, read_bytes
from npimage.ingest.extract import extract_catalog
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline
from npimage.storage.runs import new_run_id


def _run(data: Path, source: str, mode: str = "full", fv: bool = False,
         backend_url: str | None = None, client: str = "acme") -> dict:
    settings = Settings().with_overrides(data_dir=data, fv=fv)
    ctx = settings_context(client, source, new_run_id(), settings, mode=mode,
                           backend=backend_url)
    return run_pipeline(ctx, workers=1, report=False)


def _images(small_demo, tmp_path: Path, limit: int | None = None) -> Path:
    """A copy of the demo's images (the first `limit` files): a folder source."""
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((small_demo.manifest.parent / "images").iterdir())[:limit]:
        shutil.copy2(p, folder / p.name)
    return folder


def _touch_all(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _url(dsn: str) -> str:
    """postgresql:// URL of a key=value DSN (what users pass to --source / --backend)."""
    import psycopg2.extensions

    p = psycopg2.extensions.parse_dsn(dsn)
    return (f"postgresql://{p.get('user', 'postgres')}@{p['host']}:{p.get('port', 5432)}"
            f"/{p['dbname']}")


def _pairs(data: Path, client: str = "acme") -> list:
    return table_rows(data / "warehouse.duckdb", "image_matches", client)


# -- incremental after a run without FV (ArrowTypeError string vs null) --------------------

def test_incremental_after_no_fv_run_and_touched_images(small_demo, tmp_path):
    """Every image touched: the incremental run keeps nothing of the baseline (an empty id
    list), which read as a `null`-typed filter and failed every later nightly."""
    folder = _images(small_demo, tmp_path)
    data = tmp_path / "data"
    _run(data, str(folder))
    before = _pairs(data)
    _touch_all(folder)
    info = _run(data, str(folder), mode="incremental")
    assert info["signatures_computed"] + info["signatures_reused"] == info["images"]
    assert _pairs(data) == before
    _run(data, str(folder), mode="incremental")  # and the next nightly too
    assert _pairs(data) == before


def test_incremental_after_backend_rows_all_updated(pg_backend, small_demo, tmp_path):
    res = extract_catalog("hospital", small_demo.manifest, tmp_path / "cat.parquet",
                          tmp_path / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    data = tmp_path / "data"
    _run(data, _url(pg_backend), client="hospital")
    before = _pairs(data, "hospital")
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("UPDATE np_image SET updated_at = now()")
    _run(data, _url(pg_backend), mode="incremental", client="hospital")
    assert _pairs(data, "hospital") == before


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    """The default FV model, converted once for this module."""
    from npimage.fv import load_extractor

    cache = tmp_path_factory.mktemp("models")
    load_extractor("efficientnet-lite0", cache)
    return cache


@pytest.mark.parametrize("order", [(True, False), (False, True)], ids=["fv-then-no-fv",
                                                                        "no-fv-then-fv"])
def test_incremental_after_switching_fv(order, small_demo, tmp_path, model_cache):
    """FV on, then off, then incremental (and the reverse): signatures with and without
    vectors, and touched images, meet in one table."""
    folder = _images(small_demo, tmp_path, limit=16)
    data = tmp_path / "data"
    (data / "models").parent.mkdir(parents=True)
    (data / "models").symlink_to(model_cache)
    first, second = order
    _run(data, str(folder), fv=first)
    _run(data, str(folder), fv=second)
    for p in sorted(folder.rglob("*.jpg"))[:5]:
        os.utime(p)
    _run(data, str(folder), mode="incremental", fv=second)
    _touch_all(folder)
    _run(data, str(folder), mode="incremental", fv=first)
    clean = tmp_path / "clean"
    (clean / "models").parent.mkdir(parents=True)
    (clean / "models").symlink_to(model_cache)
    _run(clean, str(folder), fv=first)
    assert _pairs(data) == _pairs(clean)


# -- ids with control characters, oversized fields ---------------------------------------

def _hostile_manifest(small_demo, path: Path) -> dict[str, str]:
    """The demo manifest with three hostile rows; returns their original image ids."""
    with small_demo.manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    hostile = {"nul": "nul\x00id", "newline": "new\nline", "huge": "x" * 200_000}
    for row, value in zip(rows[:3], hostile.values(), strict=False):
        row["image_id"] = value
        row["uri"] = str((small_demo.manifest.parent / row["uri"]).resolve())
    for row in rows[3:]:
        row["uri"] = str((small_demo.manifest.parent / row["uri"]).resolve())
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return hostile


def test_control_characters_and_huge_fields_become_rejects_with_backend(
        pg_backend, small_demo, tmp_path):
    """A NUL in an id made the backend load fail (CharacterNotInRepertoire) and a field
    over 131 072 characters stopped the run (_csv.Error): now each is one rejects row."""
    manifest = tmp_path / "hostile.csv"
    _hostile_manifest(small_demo, manifest)
    data = tmp_path / "data"
    for _ in range(2):  # and the next run too
        info = _run(data, str(manifest), backend_url=_url(pg_backend))
        assert info["rejects"] >= 3
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    reasons = dict(con.execute("SELECT image_id, reason FROM rejects WHERE stage = 'extract'")
                   .fetchall())
    con.close()
    assert reasons["nul\\x00id"].startswith("image_id contains a control character (U+0000")
    assert reasons["new\\x0aline"].startswith("image_id contains a control character (U+000A")
    assert any("field larger than field limit" in r for r in reasons.values())
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM npimage_image_match WHERE client_id = 'acme'")
        assert cur.fetchone()[0] == len(_pairs(data)) > 0
        cur.execute("SELECT status FROM npimage_run WHERE client_id = 'acme'")
        assert [r[0] for r in cur.fetchall()] == ["success", "success"]


def test_backend_source_with_control_characters_in_ids(pg_backend, small_demo, tmp_path):
    """A backend source with a control character (PostgreSQL text holds any but NUL)."""
    res = extract_catalog("hospital", small_demo.manifest, tmp_path / "cat.parquet",
                          tmp_path / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("UPDATE np_image SET image_id = image_id || E'\\x01' WHERE image_id = "
                    "(SELECT min(image_id) FROM np_image)")
    info = _run(tmp_path / "data", _url(pg_backend), client="hospital")
    assert info["rejects"] == 1 and info["images"] == res.n_images - 1


def test_long_ids_are_rejected_with_the_limit(small_demo, tmp_path):
    manifest = tmp_path / "long.csv"
    _hostile_manifest(small_demo, manifest)
    text = manifest.read_text(encoding="utf-8").replace("x" * 200_000, "y" * 5_000)
    manifest.write_text(text, encoding="utf-8")
    res = extract_catalog("c", manifest, tmp_path / "cat.parquet", tmp_path / "rej.parquet")
    rejects = duckdb.sql(f"SELECT image_id, reason FROM '{tmp_path / 'rej.parquet'}'").fetchall()
    long = [r for r in rejects if r[0].startswith("y")]
    assert long == [("y" * 200 + "... (5000 characters)",
                     "image_id too long: 5000 characters > limit 1000")]
    assert res.n_images > 0


# -- local:// devices and FIFOs ------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["local://", "file://", ""])
def test_local_urls_read_only_regular_files(spelling, tmp_path):
    """`local:///dev/zero` went through fsspec and read 1 GiB; a FIFO blocked."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file \\(a character device\\)"):
        read_bytes(f"{spelling}/dev/zero", timeout=5)
    with pytest.raises(ImageError, match="not a regular file \\(a FIFO/named pipe\\)"):
        read_bytes(f"{spelling}{fifo}", timeout=5)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(ImageError, match="file too large: 2048 bytes > limit 1024"):
        read_bytes(f"{spelling}{big}", timeout=5, max_bytes=1024)


def test_remote_reads_stop_at_the_byte_cap():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/big.bin", b"\0" * 5_000_000)
    with pytest.raises(ImageError, match="file too large: more than 1000000 bytes"):
        read_bytes("memory:///big.bin", timeout=5, max_bytes=1_000_000)


def test_local_device_and_fifo_in_a_manifest_are_rejects(small_demo, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    manifest = tmp_path / "m.csv"
    lines = small_demo.manifest.read_text(encoding="utf-8").splitlines()
    base = small_demo.manifest.parent
    fixed = [lines[0]] + [line.replace("images/", f"{base}/images/") for line in lines[1:]]
    fixed += ["zero,pz,local:///dev/zero", f"fifo,pf,local://{fifo}"]
    manifest.write_text("\n".join(fixed) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    _run(data, str(manifest))
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    reasons = dict(con.execute("SELECT image_id, reason FROM rejects").fetchall())
    con.close()
    assert reasons == {"zero": "not a regular file (a character device)",
                       "fifo": "not a regular file (a FIFO/named pipe)"}


# -- decode memory -------------------------------------------------------------------------

_MAKE = textwrap.dedent("""
    import sys
    import numpy as np
    from PIL import Image
    kind, out = sys.argv[1], sys.argv[2]
    arr = np.zeros((9000, 12000), np.uint16 if kind == "grey16" else np.uint8)
    arr[::97, :] = 40000 if kind == "grey16" else 3
    img = Image.fromarray(arr)
    if kind == "palette":
        img = img.convert("P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
        img.save(out, "PNG", transparency=0)
    else:
        img.save(out, "PNG")
""")
_MEASURE = textwrap.dedent("""
    import resource, sys
    from npimage.ingest.decode import decode
    data = open(sys.argv[1], "rb").read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    img = decode(data, 250_000_000)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(img.width, img.height, img.rgb.mode, (after - before) // 1024)
""")


@pytest.mark.parametrize("kind,mode,budget_mib", [("grey16", "I;16", 400),
                                                   ("palette", "P", 300)])
def test_huge_16bit_and_palette_png_decode_with_bounded_memory(kind, mode, budget_mib,
                                                              tmp_path):
    """12000 x 9000: +2.68 GiB (16-bit grey) and +1.75 GiB (palette with transparency)
    before; now the decoded picture (216 / 108 MB, PNG has no reduced decode) plus strips."""
    path = tmp_path / f"{kind}.png"
    env = {**os.environ, "PYTHONPATH": str(Path(npimage.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", _MAKE, kind, str(path)], check=True, env=env)
    from PIL import Image

    with Image.open(path) as img:
        assert img.mode == mode and img.size == (12000, 9000)
    assert path.stat().st_size < 400_000
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], check=True, env=env,
                         capture_output=True, text=True).stdout.split()
    assert out[:3] == ["12000", "9000", "RGB"]
    assert int(out[3]) < budget_mib, f"peak RSS +{out[3]} MiB"
