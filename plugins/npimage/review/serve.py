"""`npimage review`: the review application as a local server (uvicorn), without Airflow."""

from __future__ import annotations

import getpass
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI

from npimage.review.app import ReviewConfig, create_app, sync_backend
from npimage.review.auth import LocalAuth, TokenAuth, check_bind, token_login_middleware


def standalone_app(data_dir: Path, client: str, *, token: str | None = None,
                   user: str | None = None, backend: str | None = None) -> FastAPI:
    """The review app with the standalone server's authentication (see npimage.review.auth)."""
    name = user or getpass.getuser()
    config = ReviewConfig(data_dir=Path(data_dir).resolve(), origin="standalone",
                          backend=(lambda: backend) if backend else None, client=client)
    auth = TokenAuth(token, name) if token else LocalAuth(name)
    app = create_app(config, auth)
    if token:
        app.add_middleware(token_login_middleware(token))
    app.state.config = config
    return app


def serve(data_dir: Path, client: str, *, host: str = "127.0.0.1", port: int = 8765,
          token: str | None = None, user: str | None = None,
          backend: str | None = None) -> int:
    """Check the address and token, then serve until interrupted. Raises ValueError when
    asked to listen beyond loopback without a token (the CLI exits with code 2)."""
    import uvicorn

    check_bind(host, token)
    warehouse = Path(data_dir) / "warehouse.duckdb"
    if not warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {warehouse}: run `npimage run` first")
    app = standalone_app(data_dir, client, token=token, user=user, backend=backend)
    if backend:
        print(f"backend: decisions log sent to npimage_decision: "
              f"{sync_backend(app.state.config, client)}")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/c/{quote(client, safe='')}"
    print(f"review: {url}" + (f"?token={token}" if token else "") + "  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
