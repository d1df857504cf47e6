"""Authentication of the standalone review server (`npimage review`).

On a loopback address (127.0.0.1, ::1, localhost) the server may run without a token:
only the machine's own users reach it. On any other address it refuses to start without
a token (`--token` or NPIMAGE_REVIEW_TOKEN), and then every request must carry it: as
`Authorization: Bearer <token>`, or in the cookie that opening `/?token=<token>` once
sets (HttpOnly, SameSite=Strict). Tokens are compared in constant time. Decisions are
recorded under the reviewer's name (`--user`, NPIMAGE_REVIEW_USER, else the OS user).
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request

from npimage.errors import InputError
from npimage.review.app import Auth

COOKIE = "npimage_review_token"
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (InputError) to listen beyond loopback without a token, or with a weak one."""
    if token is not None and len(token) < MIN_TOKEN:
        raise InputError(f"the review token must have at least {MIN_TOKEN} characters",
                         "e.g. --token $(openssl rand -hex 16)")
    if not is_loopback(host) and not token:
        raise InputError(f"refusing to listen on {host} without a token",
                         "pass --token or set NPIMAGE_REVIEW_TOKEN, or listen on 127.0.0.1")


class LocalAuth(Auth):
    """Everyone who reaches the server is `user` (loopback only, no token)."""

    def __init__(self, user: str) -> None:
        self.user = user

    async def viewer(self, request: Request) -> str:
        return self.user


class TokenAuth(Auth):
    """Every request carries the shared token (header or cookie); the user is `user`."""

    def __init__(self, token: str, user: str) -> None:
        self.token = token
        self.user = user

    def _presented(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    async def viewer(self, request: Request) -> str:
        given = self._presented(request)
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return self.user
        raise HTTPException(401, "a token is required: open the address printed by "
                                 "`npimage review` (it ends in ?token=...)",
                            headers={"WWW-Authenticate": "Bearer"})


def token_login_middleware(token: str):
    """An ASGI middleware: `?token=<right token>` sets the cookie and redirects without it."""
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import RedirectResponse

    class TokenLogin(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            given = request.query_params.get("token")
            if given is not None and request.method == "GET":
                if not hmac.compare_digest(given.encode(), token.encode()):
                    raise_page = "wrong token"
                    from starlette.responses import PlainTextResponse

                    return PlainTextResponse(raise_page, status_code=401)
                query = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items()
                                 if k != "token")
                target = request.url.path + (f"?{query}" if query else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            return await call_next(request)

    return TokenLogin
