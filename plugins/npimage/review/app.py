"""The review application: a FastAPI app of server-rendered pages and a small JSON API.

    create_app(ReviewConfig(data_dir=...), auth)   -> FastAPI

It knows nothing of Airflow: `auth` decides who the user is (npimage.review.auth for the
standalone server, npimage.orchestration.review inside Airflow's web server). Pages:

    /                          clients of the warehouse
    /c/{client}                groups of same/retouched images, product merge candidates
    /c/{client}/group/{n}      one group: its images (size, bytes, product name), its pairs
    /c/{client}/products       product merge candidates
    /c/{client}/pair?kind=&a=&b=   compare a pair: full size, zoom, slider, flicker,
                               difference, suggestion, keys, decision buttons
    /c/{client}/image?id=[&w=] the picture (full size, or a thumbnail of width w)
    /c/{client}/diff?a=&b=     difference overlay (PNG)
    /c/{client}/decisions      decisions made (history); .csv exports them
    POST /c/{client}/decisions {kind, item_id, match_id, decision, keep_id?, note?}
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from pydantic import BaseModel

from npimage.bands import BANDS
from npimage.ingest.decode import ImageError
from npimage.review import pictures, store
from npimage.review.data import GROUP_BANDS, Pair, Queue, QueueCache, decisions_in_force
from npimage.sqlfiles import load_sql

log = logging.getLogger("npimage.review")

BAND_WORDS = {"same": "Same image", "retouched": "Same image, retouched",
              "very_similar": "Very similar product", "similar": "Fairly similar"}
PAGE = 50  # groups or product pairs per page
GROUP_IMAGES, GROUP_PAIRS = 120, 300  # per page of a (large) group

UserDep = Callable[[Request], Awaitable[str]]


@dataclass(frozen=True)
class ReviewConfig:
    """Where the data is, and where decisions go besides the log."""

    data_dir: Path
    origin: str = "standalone"  # recorded with each decision: standalone | airflow
    backend: Callable[[], str | None] | None = None  # the backend DSN, resolved when needed
    client: str | None = None  # standalone: the one client served (others still reachable)
    read_timeout: float = 30.0

    @property
    def warehouse(self) -> Path:
        return Path(self.data_dir) / "warehouse.duckdb"


class Auth:
    """Who the user is. `viewer` for reading, `decider` for recording decisions.

    Both are async FastAPI dependencies returning the user's name or raising
    HTTPException (401: not signed in, 403: not allowed).
    """

    async def viewer(self, request: Request) -> str:
        raise NotImplementedError

    async def decider(self, request: Request) -> str:
        return await self.viewer(request)


class DecisionIn(BaseModel):
    kind: str = "image"
    item_id: str
    match_id: str
    decision: str
    keep_id: str | None = None
    note: str | None = None


def make_env() -> Environment:
    env = Environment(loader=PackageLoader("npimage.review", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["filesize"] = _filesize
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.globals["BAND_WORDS"] = BAND_WORDS
    env.globals["DECISIONS"] = store.DECISIONS
    return env


def _filesize(n: int | None) -> str:
    if n is None:
        return "size unknown"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def create_app(config: ReviewConfig, auth: Auth) -> FastAPI:
    """The review application over `config.data_dir` (warehouse + decisions log)."""
    app = FastAPI(title="npimage review", docs_url=None, redoc_url=None, openapi_url=None)
    env = make_env()
    cache = QueueCache(config.warehouse, config.data_dir)
    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")
    viewer = Depends(auth.viewer)
    decider = Depends(auth.decider)

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def render(request: Request, name: str, user: str, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(base=root(request), user=user, **ctx)
        return HTMLResponse(html)

    def queue_of(client: str) -> Queue:
        try:
            return cache.get(client)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except FileNotFoundError as exc:
            raise HTTPException(503, str(exc)) from exc

    def pair_url(base: str, client: str, p: Pair) -> str:
        q = urlencode({"kind": p.kind, "a": p.item_id, "b": p.match_id})
        return f"{base}/c/{quote(client, safe='')}/pair?{q}"

    @lru_cache(maxsize=64)
    def picture(client: str, image_id: str) -> pictures.Picture:
        img = queue_of(client).images.get(image_id)
        if img is None or not img.uri:
            raise HTTPException(404, f"no image {image_id!r} in client {client!r}")
        try:
            return pictures.load(img.uri, config.read_timeout)
        except ImageError as exc:
            raise HTTPException(422, f"image {image_id!r} cannot be shown: {exc}") from exc

    @app.get("/", response_class=HTMLResponse)
    def clients(request: Request, user: str = viewer) -> HTMLResponse:
        from npimage.review.data import connect

        try:
            con = connect(config.warehouse)
        except FileNotFoundError as exc:
            raise HTTPException(503, str(exc)) from exc
        try:
            cur = con.execute(load_sql("duckdb", "review_clients"),
                              {"bands": list(GROUP_BANDS)})
            rows = cur.fetchall()
            cols = [d[0] for d in cur.description]
        finally:
            con.close()
        return render(request, "clients.html.j2", user,
                      clients=[dict(zip(cols, r, strict=True)) for r in rows],
                      default=config.client)

    @app.get("/c/{client}", response_class=HTMLResponse)
    def overview(request: Request, client: str, page: int = Query(1, ge=1),
                       user: str = viewer) -> HTMLResponse:
        q = queue_of(client)
        decided = decisions_in_force(config.data_dir, client)
        groups = q.groups[(page - 1) * PAGE: page * PAGE]
        products = [p for p in q.pairs if p.kind == "product"]
        undecided = next((p for p in q.pairs if p.key not in decided and not p.rejected), None)
        return render(request, "overview.html.j2", user, q=q, client=client, groups=groups,
                      page=page, pages=max(1, -(-len(q.groups) // PAGE)), decided=decided,
                      n_products=len(products),
                      n_product_candidates=sum(not p.rejected for p in products),
                      products=[p for p in products if not p.rejected][:10],
                      first=pair_url(root(request), client, undecided) if undecided else None,
                      pair_url=lambda p: pair_url(root(request), client, p))

    @app.get("/c/{client}/group/{n}", response_class=HTMLResponse)
    def group(request: Request, client: str, n: int, page: int = Query(1, ge=1),
              user: str = viewer) -> HTMLResponse:
        q = queue_of(client)
        if not 0 <= n < len(q.groups):
            raise HTTPException(404, f"no group {n} (client {client!r} has {len(q.groups)})")
        g = q.groups[n]
        images = [q.images[i] for i in g.images if i in q.images]
        keep = max(images, key=lambda i: ((i.width or 0) * (i.height or 0), i.size_bytes or 0),
                   default=None)
        pages = max(1, -(-len(images) // GROUP_IMAGES), -(-len(g.pairs) // GROUP_PAIRS))
        shown = images[(page - 1) * GROUP_IMAGES: page * GROUP_IMAGES]
        pairs = g.pairs[(page - 1) * GROUP_PAIRS: page * GROUP_PAIRS]
        return render(request, "group.html.j2", user, q=q, client=client, g=g, images=shown,
                      page=page, pages=pages, n_images=len(images),
                      keep=keep, pairs=[q.pairs[i] for i in pairs],
                      decided=decisions_in_force(config.data_dir, client),
                      pair_url=lambda p: pair_url(root(request), client, p),
                      prev=n - 1 if n > 0 else None, next=n + 1 if n + 1 < len(q.groups) else None)

    @app.get("/c/{client}/products", response_class=HTMLResponse)
    def products(request: Request, client: str, page: int = Query(1, ge=1),
                       user: str = viewer) -> HTMLResponse:
        q = queue_of(client)
        rows = [p for p in q.pairs if p.kind == "product"]
        return render(request, "products.html.j2", user, q=q, client=client,
                      rows=rows[(page - 1) * PAGE: page * PAGE], page=page,
                      pages=max(1, -(-len(rows) // PAGE)),
                      decided=decisions_in_force(config.data_dir, client),
                      pair_url=lambda p: pair_url(root(request), client, p))

    def find_pair(q: Queue, kind: str, a: str, b: str) -> tuple[int, Pair]:
        pos = q.position(kind, a, b)
        if pos is None:
            raise HTTPException(404, f"no {kind} pair ({a!r}, {b!r}) to review in the "
                                     f"published run of {q.client_id!r}")
        return pos, q.pairs[pos]

    @app.get("/c/{client}/pair", response_class=HTMLResponse)
    def pair(request: Request, client: str, a: str, b: str, kind: str = "image",
                   user: str = viewer) -> HTMLResponse:
        q = queue_of(client)
        pos, p = find_pair(q, kind, a, b)
        suggestion: dict[str, str | None]
        try:
            s = pictures.suggest_keep(picture(client, p.image_a), picture(client, p.image_b))
            suggestion = {"keep": p.image_a if s.keep == "a" else p.image_b, "reason": s.reason}
        except HTTPException as exc:
            suggestion = {"keep": None, "reason": f"no suggestion: {exc.detail}"}
        base = root(request)
        return render(request, "pair.html.j2", user, q=q, client=client, p=p, pos=pos,
                      ia=q.images.get(p.image_a), ib=q.images.get(p.image_b),
                      suggestion=suggestion,
                      decision=decisions_in_force(config.data_dir, client).get(p.key),
                      prev_url=pair_url(base, client, q.pairs[pos - 1]) if pos > 0 else None,
                      next_url=(pair_url(base, client, q.pairs[pos + 1])
                                if pos + 1 < len(q.pairs) else None),
                      img_url=lambda i: f"{base}/c/{quote(client, safe='')}/image?"
                                        + urlencode({"id": i}),
                      diff_url=f"{base}/c/{quote(client, safe='')}/diff?"
                               + urlencode({"a": p.image_a, "b": p.image_b}))

    @app.get("/c/{client}/image")
    def image(client: str, id: str, w: int | None = Query(None, ge=16, le=1024),
                    user: str = viewer) -> Response:
        pic = picture(client, id)
        if w is None:
            data, media = pictures.web_bytes(pic)
            return Response(data, media_type=media,
                            headers={"Cache-Control": "private, max-age=600"})
        thumb = pic.rgb.copy()
        thumb.thumbnail((w, w), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        thumb.save(out, "JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=600"})

    @app.get("/c/{client}/diff")
    def diff(client: str, a: str, b: str, user: str = viewer) -> Response:
        png, share = pictures.difference(picture(client, a), picture(client, b))
        return Response(png, media_type="image/png",
                        headers={"X-Differ-Share": f"{share:.4f}",
                                 "Cache-Control": "private, max-age=600"})

    @app.post("/c/{client}/decisions")
    def decide(request: Request, client: str, body: DecisionIn,
                     user: str = decider) -> JSONResponse:
        q = queue_of(client)
        pos, p = find_pair(q, body.kind, body.item_id, body.match_id)
        comps = {k: v for k, v in p.components.items() if k != "same_bytes"}
        try:
            row = store.record(config.data_dir, store.Decision(
                client_id=client, kind=p.kind, item_id=p.item_id, match_id=p.match_id,
                decision=body.decision, decided_by=user, run_id=q.run_id, band=p.band,
                score=p.score, components=comps, keep_id=body.keep_id, origin=config.origin,
                note=body.note))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        backend = _send_backend(config, [row])
        nxt = q.pairs[pos + 1] if pos + 1 < len(q.pairs) else None
        return JSONResponse({
            "decision": {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                         for k, v in row.items()},
            "backend": backend,
            "next": pair_url(root(request), client, nxt) if nxt else None})

    @app.get("/c/{client}/decisions", response_class=HTMLResponse)
    def decisions(request: Request, client: str, user: str = viewer) -> HTMLResponse:
        log_rows = store.read_log(config.data_dir, client).to_pylist()[::-1]
        q = queue_of(client)
        return render(request, "decisions.html.j2", user, q=q, client=client, rows=log_rows,
                      in_force=decisions_in_force(config.data_dir, client),
                      key=lambda r: f"{r['kind']}:{r['item_id']}\t{r['match_id']}",
                      pair_url=lambda kind, a, b: f"{root(request)}/c/{quote(client, safe='')}"
                      f"/pair?" + urlencode({"kind": kind, "a": a, "b": b}))

    @app.get("/c/{client}/decisions.csv")
    def export(client: str, history: bool = False, user: str = viewer) -> PlainTextResponse:
        table = (store.read_log(config.data_dir, client) if history
                 else store.latest(config.data_dir, client))
        name = f"decisions-{client}.csv".replace('"', "")
        return PlainTextResponse(store.to_csv(table), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/c/{client}/summary")
    def summary(client: str, user: str = viewer) -> dict[str, Any]:
        q = queue_of(client)
        decided = decisions_in_force(config.data_dir, client)
        return {"client_id": client, "run_id": q.run_id, "groups": len(q.groups),
                "group_sizes": [len(g.images) for g in q.groups],
                "image_pairs": len(q.pairs) - q.n_products, "product_pairs": q.n_products,
                "rejected": sum(p.rejected for p in q.pairs),
                "decisions": len(decided), "user": user,
                "bands": [b for b, _ in BANDS]}

    return app


def _send_backend(config: ReviewConfig, rows: list[dict[str, Any]]) -> str:
    """Copy decision rows to the backend's npimage_decision: "sent", "off" or the error.

    The log under the data dir is the record; a backend that is down costs a warning,
    and `npimage review --sync` (or the next decision's sync) sends the log again.
    """
    if config.backend is None:
        return "off"
    try:
        dsn = config.backend()
        if not dsn:
            return "off"
        from npimage.backend import write_decisions

        write_decisions(dsn, rows)
        return "sent"
    except Exception as exc:  # the decision is kept in the log whatever happens here
        log.warning("decision not sent to the backend: %s", exc)
        return f"failed: {type(exc).__name__}: {exc}"


def sync_backend(config: ReviewConfig, client_id: str) -> str:
    """Send the client's whole decisions log to the backend (already sent rows are kept)."""
    return _send_backend(config, store.read_log(config.data_dir, client_id).to_pylist())
