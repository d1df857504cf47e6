"""The review application through its HTTP API (FastAPI's TestClient), on a real run.

A small demo catalogue is run for real (hashes only), then: groups against an independent
recursive SQL closure, pages showing sizes, bytes and product names, the difference
overlay and the keep suggestion on real pictures, decisions recorded, exported and sent
to a real PostgreSQL backend, a rerun flagging the rejected pairs, fit-weights from
decisions, the standalone server's token rules, and the Airflow plugin mounting the app.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pg import pg_connect
from PIL import Image, ImageFilter

from npimage.config import Settings
from npimage.errors import InputError
from npimage.pipeline import settings_context
from npimage.review import pictures, store
from npimage.review.auth import check_bind
from npimage.review.data import components
from npimage.review.serve import standalone_app
from npimage.runner import run_pipeline

CLIENT = "acme"


def run(data: Path, manifest: Path, run_id: str, mode: str = "full") -> dict:
    settings = Settings().with_overrides(data_dir=data, fv=False)
    return run_pipeline(settings_context(CLIENT, str(manifest), run_id, settings, mode=mode),
                        workers=1, report=False)


@pytest.fixture(scope="module")
def published(small_demo, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("review")
    run(data, small_demo.manifest, "r1")
    return data


@pytest.fixture
def data(published, tmp_path) -> Path:
    """A private copy of the published data dir: decisions of one test stay in it."""
    copy = tmp_path / "data"
    shutil.copytree(published, copy)
    return copy


def client_for(data: Path, **kw) -> TestClient:
    return TestClient(standalone_app(data, CLIENT, user=kw.pop("user", "tester"), **kw))


def sql_groups(warehouse: Path) -> set[frozenset[str]]:
    """Components of same/retouched pairs by a recursive closure in DuckDB (the check)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("""
            WITH RECURSIVE e AS (SELECT image_id a, match_image_id b FROM image_matches
                                 WHERE client_id = ? AND band IN ('same', 'retouched')),
            r(a, b) AS (SELECT DISTINCT a, a FROM e
                        UNION SELECT r.a, e.b FROM r JOIN e ON e.a = r.b)
            SELECT a, min(b) FROM r GROUP BY a""", [CLIENT]).fetchall()
    groups: dict[str, set[str]] = {}
    for image, root in rows:
        groups.setdefault(root, set()).add(image)
    return {frozenset(g) for g in groups.values()}


def test_components_match_breadth_first_search():
    rng = np.random.default_rng(3)
    n = 400
    a, b = rng.integers(0, n, 300), rng.integers(0, n, 300)
    labels = components(a, b, n)
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        adj[x].add(y)
        adj[y].add(x)
    for start in range(n):
        seen, todo = {start}, [start]
        while todo:
            for y in adj[todo.pop()] - seen:
                seen.add(y)
                todo.append(y)
        assert {i for i in range(n) if labels[i] == labels[start]} == seen
        assert labels[start] == min(seen)


def test_groups_are_the_components_of_same_and_retouched_pairs(data):
    c = client_for(data)
    home = c.get("/")
    assert home.status_code == 200 and f'href="/c/{CLIENT}"' in home.text
    summary = c.get(f"/api/c/{CLIENT}/summary").json()
    expected = sql_groups(data / "warehouse.duckdb")
    assert summary["groups"] == len(expected) > 0
    assert sorted(summary["group_sizes"], reverse=True) == sorted(map(len, expected), reverse=True)
    page = c.get(f"/c/{CLIENT}/group/0").text
    biggest = max(map(len, expected))  # group 0 is one of the largest (ties in any order)
    assert any(all(f'data-image-id="{i}"' in page for i in g)
               for g in expected if len(g) == biggest)


def test_group_page_shows_size_bytes_and_product_name(data, small_demo):
    c = client_for(data)
    page = c.get(f"/c/{CLIENT}/group/0").text
    ids = re.findall(r'data-image-id="([^"]+)"', page)
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT s.image_id, s.width, s.height, s.size_bytes, i.product_id FROM signatures s "
            "JOIN images i USING (client_id, image_id) WHERE client_id = ? "
            "AND list_contains(?, s.image_id)", [CLIENT, ids]).fetchall()
    with small_demo.manifest.open() as fh:
        names = {r["product_id"]: r["name"] for r in csv.DictReader(fh)}
    assert len(rows) == len(ids) > 1
    cards = page.split('<figure class="card')[1:]
    for image_id, w, h, size, product in rows:
        card = next(c for c in cards if f'data-image-id="{image_id}"' in c)
        assert f"{w} × {h} px" in card
        assert f"{size / 1024:.1f} KB" in card or f"{size} bytes" in card
        assert html.escape(names[product]) in card and product in card
    assert c.get(f"/c/{CLIENT}/group/999").status_code == 404


def first_pair(c: TestClient, band: str = "same") -> dict:
    from npimage.review.data import load_queue

    app = c.app
    q = load_queue(app.state.config.warehouse, app.state.config.data_dir, CLIENT)
    p = next(p for p in q.pairs if p.kind == "image" and p.band == band)
    return {"kind": "image", "a": p.item_id, "b": p.match_id, "same_bytes":
            p.components["same_bytes"]}


def test_pair_page_full_size_difference_and_suggestion(data):
    c = client_for(data)
    p = first_pair(c, "retouched")
    page = c.get(f"/c/{CLIENT}/pair", params=p)
    assert page.status_code == 200
    for part in ('id="zoom-in"', 'value="slider"', 'value="flicker"', 'value="diff"',
                 'data-decision="not_same"', "Suggested to keep"):
        assert part in page.text
    full = c.get(f"/c/{CLIENT}/image", params={"id": p["a"]})
    assert full.status_code == 200 and full.headers["content-type"].startswith("image/")
    diff = c.get(f"/c/{CLIENT}/diff", params={"a": p["a"], "b": p["b"]})
    assert diff.headers["content-type"] == "image/png"
    assert 0.0 < float(diff.headers["X-Differ-Share"]) < 1.0
    same = c.get(f"/c/{CLIENT}/diff", params={"a": p["a"], "b": p["a"]})
    assert float(same.headers["X-Differ-Share"]) == 0.0
    assert c.get(f"/c/{CLIENT}/pair", params={**p, "b": "nope"}).status_code == 404


def _pic(img: Image.Image, fmt: str) -> pictures.Picture:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=80) if fmt == "JPEG" else img.save(buf, fmt)
    return pictures.Picture(buf.getvalue(), fmt, img.width, img.height, img.copy())


def test_keep_suggestion_prefers_largest_then_sharpest_then_lossless():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    small = base.resize((200, 150))
    s = pictures.suggest_keep(_pic(small, "JPEG"), _pic(base, "JPEG"))
    assert s.keep == "b" and s.reason.startswith("largest")
    blurred = base.filter(ImageFilter.GaussianBlur(2))
    s = pictures.suggest_keep(_pic(blurred, "JPEG"), _pic(base, "JPEG"))
    assert s.keep == "b" and s.reason.startswith("sharpest")
    s = pictures.suggest_keep(_pic(base, "JPEG"), _pic(base, "PNG"))
    assert s.keep == "b" and "PNG" in s.reason


def test_decisions_are_recorded_exported_and_validated(data):
    c = client_for(data, user="alice")
    p = first_pair(c)
    body = {"kind": "image", "item_id": p["b"], "match_id": p["a"], "decision": "keep",
            "keep_id": p["a"]}
    res = c.post(f"/c/{CLIENT}/decisions", json=body)
    assert res.status_code == 200, res.text
    row = res.json()["decision"]
    assert (row["item_id"], row["match_id"]) == tuple(sorted((p["a"], p["b"])))
    assert row["decided_by"] == "alice" and row["run_id"] == "r1" and row["band"] == "same"
    assert row["score"] >= 0.99 and res.json()["backend"] == "off"
    assert c.post(f"/c/{CLIENT}/decisions", json={**body, "decision": "maybe"}).status_code == 422
    assert c.post(f"/c/{CLIENT}/decisions",
                  json={**body, "keep_id": "someone else"}).status_code == 422
    c.post(f"/c/{CLIENT}/decisions", json={**body, "decision": "skip", "keep_id": None})
    exported = list(csv.DictReader(io.StringIO(c.get(f"/c/{CLIENT}/decisions.csv").text)))
    assert [r["decision"] for r in exported] == ["skip"]  # the one in force
    history = c.get(f"/c/{CLIENT}/decisions.csv", params={"history": "true"}).text
    assert [r["decision"] for r in csv.DictReader(io.StringIO(history))] == ["keep", "skip"]
    page = c.get(f"/c/{CLIENT}/decisions").text
    assert "keep this image" in page and "alice" in page


def test_rerun_keeps_decisions_and_flags_rejected_pairs(data, small_demo):
    c = client_for(data)
    p = first_pair(c, "retouched")
    assert c.post(f"/c/{CLIENT}/decisions", json={"kind": "image", "item_id": p["a"],
                  "match_id": p["b"], "decision": "not_same"}).status_code == 200
    q = c.get(f"/api/c/{CLIENT}/summary").json()
    prod = next(x for x in store_products(data))
    assert c.post(f"/c/{CLIENT}/decisions", json={"kind": "product", "item_id": prod[0],
                  "match_id": prod[1], "decision": "not_same"}).status_code == 200
    for run_id, mode in (("r2", "incremental"), ("r3", "full")):
        run(data, small_demo.manifest, run_id, mode)
        with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
            flags = con.execute("SELECT rejected FROM image_matches WHERE client_id = ? AND "
                                "((image_id = ? AND match_image_id = ?) OR "
                                "(image_id = ? AND match_image_id = ?))",
                                [CLIENT, p["a"], p["b"], p["b"], p["a"]]).fetchall()
            assert flags == [(True,), (True,)], run_id  # kept in the table, flagged
            assert con.execute("SELECT count(*) FROM image_matches WHERE client_id = ? "
                               "AND rejected", [CLIENT]).fetchone()[0] == 2
            assert con.execute("SELECT rejected FROM product_matches WHERE client_id = ? "
                               "AND product_id = ? AND match_product_id = ?",
                               [CLIENT, *prod]).fetchone() == (True,)
            assert con.execute("SELECT count(*) FROM product_merge_candidates WHERE "
                               "client_id = ? AND product_id = ? AND match_product_id = ?",
                               [CLIENT, *prod]).fetchone() == (0,)
            assert con.execute("SELECT count(*) FROM decisions WHERE client_id = ?",
                               [CLIENT]).fetchone() == (2,)
            flagged_products = con.execute(
                "SELECT count(*) FROM product_matches WHERE client_id = ? AND rejected "
                "AND product_id < match_product_id", [CLIENT]).fetchone()[0]
    after = client_for(data).get(f"/api/c/{CLIENT}/summary").json()
    assert q["rejected"] == 0 and after["decisions"] == 2
    assert after["rejected"] == 1 + flagged_products  # the image pair, the product pairs
    assert flagged_products >= 1


def store_products(data: Path):
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT product_id, match_product_id FROM product_matches WHERE "
                           "client_id = ? AND product_id < match_product_id ORDER BY score DESC",
                           [CLIENT]).fetchall()


def test_rejected_pair_proposed_again_only_below_its_band(tmp_path):
    """merge flags a pair rejected at `retouched` while it scores retouched or better."""
    import pyarrow as pa

    from npimage.matching.compare import MATCH_COLUMNS
    from npimage.matching.merge import merge_image_matches
    from npimage.schemas import SIGNATURES
    from npimage.storage.parquet_io import write_table

    pairs = [("a", "b", 0.995), ("c", "d", 0.91), ("e", "f", 0.96)]
    shard = pa.Table.from_pylist([{"image_id": i, "match_image_id": j, "score": s, "dah": s,
                                   "ddh": s, "dph": s, "dfv": None, "same_bytes": False}
                                  for i, j, s in pairs], MATCH_COLUMNS)
    ids = [x for p in pairs for x in p[:2]]
    write_table(shard, tmp_path / "shard.parquet")
    write_table(pa.table({"image_id": ids}), tmp_path / "queries.parquet")
    write_table(pa.Table.from_pylist([{"client_id": "c", "image_id": i} for i in ids], SIGNATURES),
                tmp_path / "sigs.parquet")
    rejected = pa.table({"item_id": ["a", "c"], "match_id": ["b", "d"],
                         "band": ["retouched", "retouched"]})
    out = merge_image_matches([tmp_path / "shard.parquet"], None, tmp_path / "queries.parquet",
                              tmp_path / "sigs.parquet", tmp_path / "m.parquet", client_id="c",
                              run_id="r", top_k=5, rejected=rejected)
    flags = {(r["image_id"], r["match_image_id"]): (r["band"], r["rejected"])
             for r in out.to_pylist()}
    assert flags == {("a", "b"): ("same", True), ("b", "a"): ("same", True),
                     ("c", "d"): ("very_similar", False), ("d", "c"): ("very_similar", False),
                     ("e", "f"): ("retouched", False), ("f", "e"): ("retouched", False)}


def test_decisions_go_to_the_backend(data, pg_backend):
    from npimage.review.app import sync_backend

    c = client_for(data, backend=pg_backend)
    p = first_pair(c)
    res = c.post(f"/c/{CLIENT}/decisions", json={"kind": "image", "item_id": p["a"],
                                                 "match_id": p["b"], "decision": "merge"})
    assert res.json()["backend"] == "sent"
    assert sync_backend(c.app.state.config, CLIENT) == "sent"  # idempotent resend
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("SELECT client_id, kind, item_id, match_id, decision, decided_by, run_id, "
                    "band FROM npimage_decision")
        assert cur.fetchall() == [(CLIENT, "image", *sorted((p["a"], p["b"])), "merge",
                                   "tester", "r1", "same")]
        cur.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = "
                    "'rejected' AND table_name IN ('npimage_image_match', 'npimage_product_match')")
        assert cur.fetchone() == (2,)


def test_backend_down_keeps_the_decision(data):
    c = client_for(data, backend="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    p = first_pair(c)
    res = c.post(f"/c/{CLIENT}/decisions", json={"kind": "image", "item_id": p["a"],
                                                 "match_id": p["b"], "decision": "merge"})
    assert res.status_code == 200 and res.json()["backend"].startswith("failed")
    assert store.latest(data, CLIENT).num_rows == 1


def test_backend_product_names(pg_backend, small_demo, tmp_path):
    import pyarrow.parquet as pq

    from npimage import backend
    from npimage.ingest.extract import extract_catalog

    res = extract_catalog("hospital", small_demo.manifest, tmp_path / "cat.parquet",
                          tmp_path / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("UPDATE np_product SET name = 'Name of ' || product_id "
                    "WHERE client_id = 'hospital'")
    n = backend.product_names(pg_backend, "hospital", tmp_path / "names.parquet")
    t = pq.read_table(tmp_path / "names.parquet").to_pylist()
    assert n == len(t) > 0 and all(r["name"] == f"Name of {r['product_id']}" for r in t)


def test_fit_weights_from_decisions(data, tmp_path):
    from npimage.cli import main

    c = client_for(data)
    from npimage.review.data import load_queue

    q = load_queue(data / "warehouse.duckdb", data, CLIENT)
    for p in q.pairs:  # label every group pair: same band = same, others = not the same
        if p.kind == "image":
            c.post(f"/c/{CLIENT}/decisions", json={
                "kind": "image", "item_id": p.item_id, "match_id": p.match_id,
                "decision": "merge" if p.band == "same" else "not_same"})
    labels = store.truth_pairs(data, CLIENT)
    assert {lab for *_, lab in labels} == {"same", "different"}
    out = tmp_path / "w.json"
    code = main(["fit-weights", "--client", CLIENT, "--from-decisions", "--data-dir", str(data),
                 "--out", str(out), "--step", "0.25"])
    assert code == 0 and out.exists()


def test_standalone_refuses_other_addresses_without_a_token(tmp_path):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(InputError, match="without a token"):
            check_bind(host, None)
    check_bind("0.0.0.0", "x" * 32)
    with pytest.raises(InputError, match="at least"):
        check_bind("0.0.0.0", "short")
    env = {k: v for k, v in os.environ.items() if k != "NPIMAGE_REVIEW_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "npimage.cli", "review", "--client", CLIENT,
                           "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "without a token" in done.stderr


def test_token_is_required_when_set(data):
    token = "t" * 24
    c = client_for(data, token=token)
    assert c.get(f"/c/{CLIENT}").status_code == 401
    assert c.get(f"/c/{CLIENT}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get(f"/c/{CLIENT}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    login = c.get(f"/c/{CLIENT}?token={token}", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == f"/c/{CLIENT}"
    assert c.get(f"/c/{CLIENT}").status_code == 200  # the cookie now


def test_airflow_plugin_mounts_the_app_behind_airflow_auth(data, monkeypatch, airflow_db):
    """Airflow's own plugins manager loads the plugin, its API server mounts the app, and
    Airflow's users and roles apply: no token 401, a viewer reads but may not decide (403),
    an admin decides and is recorded by name."""
    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    monkeypatch.setenv("NPIMAGE_DATA_DIR", str(data))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "npimage-review-test-secret-0123456789")
    monkeypatch.setenv("NPIMAGE_REVIEW_CONN", "npimage_review_test_missing")
    for cached in (plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins,
                   plugins_manager._get_ui_plugins):
        cached.cache_clear()
    plugins, errors = plugins_manager._get_plugins()
    assert not errors, errors
    assert "npimage_review" in [p.name for p in plugins]
    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "npimage review"] == ["/npimage-review"]
    views, _ = plugins_manager._get_ui_plugins()
    assert any(v["href"] == "/npimage-review/" for v in views)
    app = create_app()
    assert "/npimage-review" in [getattr(r, "path", "") for r in app.routes]
    with TestClient(app) as c:
        assert c.get("/npimage-review/c/acme").status_code == 401
        am = get_auth_manager()
        bearer = {role: {"Authorization": "Bearer " + am.generate_jwt(
            SimpleAuthManagerUser(username=f"{role}-user", role=role))}
            for role in ("viewer", "admin")}
        page = c.get("/npimage-review/c/acme", headers=bearer["viewer"])
        assert page.status_code == 200 and "/npimage-review/static/review.css" in page.text
        summary = c.get("/npimage-review/api/c/acme/summary", headers=bearer["viewer"]).json()
        assert summary["groups"] > 0 and summary["user"] == "viewer-user"
        pair = first_pair(client_for(data))
        body = {"kind": "image", "item_id": pair["a"], "match_id": pair["b"], "decision": "merge"}
        assert c.post("/npimage-review/c/acme/decisions", json=body,
                      headers=bearer["viewer"]).status_code == 403
        res = c.post("/npimage-review/c/acme/decisions", json=body, headers=bearer["admin"])
        assert res.status_code == 200, res.text
        assert res.json()["decision"]["decided_by"] == "admin-user"
        assert res.json()["decision"]["origin"] == "airflow"
        c.cookies.set("_token", bearer["viewer"]["Authorization"][7:])  # the UI's cookie
        assert "viewer-user" in c.get("/npimage-review/c/acme/decisions").text
    assert store.latest(data, CLIENT).num_rows == 1


def test_static_report_shows_each_decision(data, tmp_path):
    from npimage.report import render_report
    from npimage.report.data import IMAGE_DIR, PRODUCT_DIR, page_path

    c = client_for(data, user="bob")
    p = first_pair(c, "retouched")
    c.post(f"/c/{CLIENT}/decisions", json={"kind": "image", "item_id": p["a"],
                                           "match_id": p["b"], "decision": "not_same"})
    prod = store_products(data)[0]
    c.post(f"/c/{CLIENT}/decisions", json={"kind": "product", "item_id": prod[0],
                                           "match_id": prod[1], "decision": "merge"})
    out = tmp_path / "report"
    render_report(data / "warehouse.duckdb", CLIENT, out)
    for image, other in ((p["a"], p["b"]), (p["b"], p["a"])):
        page = (out / page_path(IMAGE_DIR, image)).read_text()
        match = page.split(f'data-match-id="{other}"')[1].split("</li>")[0]
        assert 'data-decision="not_same"' in match and "bob" in match
    page = (out / page_path(PRODUCT_DIR, prod[0])).read_text()
    match = page.split(f'data-match-product-id="{prod[1]}"')[1].split("</li>")[0]
    assert "same product: merge" in match
    assert page.count('class="decision') == 1  # only the decided pair carries one
