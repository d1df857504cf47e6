"""nearest: one picture against a client's last published run, as the run scored it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from npimage.config import Settings
from npimage.errors import UnknownClientError
from npimage.matching.nearest import current_run, format_result, nearest
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline


def _run(data_dir: Path, manifest: Path, client: str, fv: bool) -> dict:
    settings = Settings().with_overrides(data_dir=data_dir, fv=fv)
    ctx = settings_context(client, str(manifest), f"{client}-run", settings)
    return run_pipeline(ctx, workers=1, report=False)


def _stored(data_dir: Path, client: str, image_id: str, k: int
            ) -> dict[str, tuple[float, float]]:
    """The run's k best image_matches of one image by compare's score:
    {match id: (verified score, compare's score)}.

    image_matches also holds pairs where the other image has this one in its top-k, so
    the image's own top-k is the k best by compare's score (score_before; desc, image_id
    asc). `nearest` verifies as the run does, so it must give the stored verified score.
    """
    ctx = current_run(client, data_dir)
    t = pq.read_table(ctx.run_dir / "image_matches.parquet",
                      columns=["image_id", "match_image_id", "score", "score_before"]
                      ).to_pylist()
    rows = sorted(((r["match_image_id"], (r["score"], r["score_before"]
                    if r["score_before"] is not None else r["score"]))
                   for r in t if r["image_id"] == image_id), key=lambda x: (-x[1][1], x[0]))
    return dict(rows[:k])


def _verified(rows: list[dict], original_id: str) -> dict[str, tuple[float, float]]:
    """{match id: (score, score_before)} of nearest's rows other than the picture itself."""
    return {r["image_id"]: (r["score"], r["score_before"]) for r in rows
            if r["image_id"] != original_id}


def _uri(manifest: Path, image_id: str) -> Path:
    with manifest.open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["image_id"] == image_id)
    return manifest.parent / row["uri"]


def _planted(truth: Path, kind: str) -> tuple[str, str]:
    """(copy id, original id) of the first planted duplicate of a kind."""
    with truth.open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["kind"] == kind)
    return row["image_id"], row["group_id"]


@pytest.fixture(scope="module")
def hashes_run(small_demo, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("nearest")
    _run(data, small_demo.manifest, "near", fv=False)
    return data


def test_a_catalogue_image_finds_itself_first_then_what_the_run_stored(hashes_run, small_demo):
    copy_id, original_id = _planted(small_demo.truth, "recompress")
    result = nearest(_uri(small_demo.manifest, original_id), "near", hashes_run, top_k=11)
    rows = result.table.to_pylist()
    itself = [r for r in rows if r["image_id"] == original_id]
    assert len(itself) == 1 and rows[0]["score"] == 1.0  # ties at 1.0 go by image_id
    assert itself[0]["score"] == 1.0 and itself[0]["same_bytes"] and itself[0]["band"] == "same"
    assert itself[0]["product_id"] and itself[0]["uri"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    others = _verified(rows, original_id)
    assert copy_id in others
    stored = _stored(hashes_run, "near", original_id, len(others))
    assert set(others) == set(stored)
    for i, (score, before) in others.items():  # the verified score the run stored
        assert (score, before) == pytest.approx(stored[i], abs=1e-6), i
    assert all(r["dfv"] is None for r in rows)


def test_an_edited_picture_outside_the_catalogue_finds_its_original(hashes_run, small_demo,
                                                                    tmp_path):
    _, original_id = _planted(small_demo.truth, "recompress")
    with Image.open(_uri(small_demo.manifest, original_id)) as img:
        small = img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=70)
    path = tmp_path / "edited.jpg"
    path.write_bytes(buf.getvalue())
    result = nearest(path, "near", hashes_run, top_k=3)
    best = {r["image_id"]: r for r in result.table.to_pylist()}
    assert original_id in best
    assert not best[original_id]["same_bytes"]
    assert best[original_id]["band"] in ("same", "retouched")
    text = format_result(result)
    assert original_id in text and "FV off" in text and "compare" in text


def test_threshold_and_errors(hashes_run, small_demo, tmp_path):
    _, original_id = _planted(small_demo.truth, "recompress")
    image = _uri(small_demo.manifest, original_id)
    strict = nearest(image, "near", hashes_run, top_k=10, threshold=1.0)
    assert all(s == 1.0 for s in strict.table["score"].to_pylist())
    with pytest.raises(UnknownClientError, match="no published run"):
        nearest(image, "nobody", hashes_run)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        nearest(text, "near", hashes_run)


def test_fv_run_is_queried_with_its_model(small_demo, tmp_path):
    """A run with FV: the picture gets a vector from the run's model; dfv is reported."""
    copy_id, original_id = _planted(small_demo.truth, "recompress")
    with small_demo.manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if r["image_id"] in (copy_id, original_id)] + rows[:6]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in {r["image_id"]: r for r in keep}.values():
            writer.writerow({**r, "uri": str(small_demo.manifest.parent / r["uri"])})
    data = tmp_path / "data"
    _run(data, manifest, "nearfv", fv=True)
    result = nearest(_uri(small_demo.manifest, original_id), "nearfv", data, top_k=5)
    rows_out = result.table.to_pylist()
    itself = [r for r in rows_out if r["image_id"] == original_id]
    assert result.fv and itself[0]["score"] == 1.0
    assert itself[0]["dfv"] == pytest.approx(1.0, abs=1e-3)
    others = _verified(rows_out, original_id)
    assert copy_id in others
    stored = _stored(data, "nearfv", original_id, len(others))
    assert set(others) == set(stored)
    for i, (score, before) in others.items():
        assert (score, before) == pytest.approx(stored[i], abs=1e-6), i
    assert "FV" in result.timings


def test_nearest_verifies_as_the_run_did(tmp_path):
    """A strength (dosage) variant of one template: compare puts it in `same` with the base pack;
    nearest moves it below `retouched` with the run's reason and score, and keeps a copy."""
    import numpy as np
    from npimage_demo import variants

    members = variants._family(np.random.default_rng(3), set(), 4)
    packs = {change: variants._on_white(p, 11) for p, change in members}
    base, variant = packs["base"], packs["dosage"]
    folder = tmp_path / "catalogue"
    (folder / "images").mkdir(parents=True)
    base.save(folder / "images" / "base.png")
    base.save(folder / "images" / "copy.jpg", quality=80)
    variant.save(folder / "images" / "variant.png")
    (folder / "manifest.csv").write_text(
        "image_id,product_id,uri,reference,family,name\n"
        "base,P1,images/base.png,,,base\ncopy,P2,images/copy.jpg,,,copy\n"
        "variant,P3,images/variant.png,,,variant\n")
    settings = Settings().with_overrides(data_dir=tmp_path / "data", fv=False, read="none")
    run_pipeline(settings_context("fam", str(folder / "manifest.csv"), "r1", settings),
                 workers=1, report=False)
    result = nearest(folder / "images" / "variant.png", "fam", tmp_path / "data", top_k=5)
    rows = {r["image_id"]: r for r in result.table.to_pylist()}
    assert rows["base"]["score_before"] >= 0.95 > rows["base"]["score"], rows["base"]
    assert rows["base"]["verify_reason"] and rows["base"]["band"] != "same"
    stored = _stored(tmp_path / "data", "fam", "variant", 5)
    assert (rows["base"]["score"], rows["base"]["score_before"]) == pytest.approx(
        stored["base"], abs=1e-6)
    assert rows["variant"]["score"] == 1.0 and rows["variant"]["verify_reason"] is None
    assert "from " in format_result(result)  # the moved row says what it moved from
