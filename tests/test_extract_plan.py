"""extract (folder and manifest sources) and plan (batches, incremental skipping)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from npimage.ingest.extract import extract_catalog, parse_nextpage_name
from npimage.ingest.plan import batch_size_for, plan_batches


@pytest.mark.parametrize(("stem", "product", "ref"), [
    ("07640160162588_PIECE_01", "07640160162588", "07640160162588"),
    ("266846 07640160162588_PIECE_01", "07640160162588", "07640160162588"),
    ("4006381333931_piece_2", "4006381333931", "4006381333931"),
    ("holiday photo", "holiday photo", None),
])
def test_nextpage_naming(stem, product, ref):
    assert parse_nextpage_name(stem) == (product, ref)


def _img(path, colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def test_directory_source(tmp_path):
    src = tmp_path / "src"
    _img(src / "a" / "07640160162588_PIECE_01.jpg")
    _img(src / "plain name é.png")
    _img(src / "dup.jpg")
    _img(src / "dup.png")
    (src / "notes.txt").write_text("not an image")
    res = extract_catalog("c", src, tmp_path / "cat.parquet", tmp_path / "rej.parquet")
    cat = {r["image_id"]: r for r in pq.read_table(res.catalog).to_pylist()}
    assert set(cat) == {"a/07640160162588_PIECE_01", "plain name é", "dup"}
    assert cat["a/07640160162588_PIECE_01"]["product_id"] == "07640160162588"
    assert cat["plain name é"]["product_id"] == "plain name é"
    assert cat["dup"]["size_bytes"] > 0 and cat["dup"]["modified_at"] is not None
    reasons = {r["image_id"]: r["reason"] for r in pq.read_table(res.rejects).to_pylist()}
    assert "duplicate image_id" in reasons["dup"]
    assert "not an image file extension" in reasons["notes.txt"]


def test_manifest_source(tmp_path):
    _img(tmp_path / "imgs" / "x.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,product_id,uri,reference\n"
                        "1,P1,imgs/x.jpg,123\n"
                        "2,,imgs/x.jpg,\n"
                        "1,P2,imgs/x.jpg,\n"
                        "3,P3,/nonexistent/y.jpg,\n")
    res = extract_catalog("c", manifest, tmp_path / "cat.parquet", tmp_path / "rej.parquet")
    rows = pq.read_table(res.catalog).to_pylist()
    assert [r["image_id"] for r in rows] == ["1", "3"]
    assert rows[0]["uri"] == str((tmp_path / "imgs" / "x.jpg").resolve())
    assert rows[0]["reference"] == "123"
    assert rows[1]["size_bytes"] is None  # missing file: rejected later, at read time
    reasons = [r["reason"] for r in pq.read_table(res.rejects).to_pylist()]
    assert any("empty product_id" in r for r in reasons)
    assert any("duplicate image_id" in r for r in reasons)


def test_manifest_without_required_columns_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n1,x.jpg\n")
    expected = r"missing column\(s\) \['image_id', 'product_id', 'uri'\]"
    with pytest.raises(ValueError, match=expected):
        extract_catalog("c", manifest, tmp_path / "c.parquet", tmp_path / "r.parquet")


def test_batches_never_exceed_the_map_limit():
    assert batch_size_for(10_000, 256, 1024) == 256
    assert batch_size_for(1_000_000, 256, 1024) == 977
    assert -(-1_000_000 // batch_size_for(1_000_000, 256, 1024)) <= 1024


def test_plan_cuts_batches(tmp_path):
    src = tmp_path / "src"
    for i in range(7):
        _img(src / f"{i}.jpg", (i * 30, 0, 0))
    res = extract_catalog("c", src, tmp_path / "cat.parquet", tmp_path / "rej.parquet")
    plan = plan_batches(res.catalog, None, tmp_path / "plan", incremental=False, fv=False,
                        fv_model="m", batch_size=3)
    assert [pq.read_metadata(b).num_rows for b in plan.batches] == [3, 3, 1]
    assert plan.n_todo == 7 and plan.n_skipped == 0


def test_resolved_paths_are_path_resolves(tmp_path):
    """extract resolves each directory once (npimage.ingest.extract._RealPaths): the same
    paths as Path.resolve for plain files, links (absolute, relative, through linked
    directories, chains), dangling links and loops."""
    import os
    from pathlib import Path

    from npimage.ingest.extract import _absolute, _RealPaths

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "a.jpg").write_bytes(b"x")
    (real / "sub" / "b.jpg").write_bytes(b"x")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "plain.jpg").write_bytes(b"x")
    os.symlink(real / "a.jpg", tree / "abs.jpg")
    os.symlink("../../real/sub/b.jpg", tree / "d" / "rel.jpg")
    os.symlink(real / "sub", tmp_path / "linked-dir")
    os.symlink(tmp_path / "linked-dir" / "b.jpg", tree / "via-dir.jpg")
    os.symlink(tree / "abs.jpg", tree / "chain.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tree / "dangling.jpg")
    os.symlink(tree / "loop2.jpg", tree / "loop1.jpg")
    os.symlink(tree / "loop1.jpg", tree / "loop2.jpg")
    paths = [Path(dirpath) / name for dirpath, _, names in os.walk(tree) for name in names]
    assert len(paths) == 8
    resolver = _RealPaths()
    for path in paths + [Path(os.path.relpath(p)) for p in paths]:
        assert resolver(path) == _absolute(path), path
    assert resolver(tree / "via-dir.jpg") == (real / "sub" / "b.jpg").resolve()
