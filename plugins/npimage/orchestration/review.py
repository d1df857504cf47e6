"""Airflow glue of the review application: Airflow's users and roles, Airflow's settings.

Inside Airflow's API server the review app is mounted by the plugin
`plugins/npimage_review_plugin.py` at /npimage-review, with a link in the UI's Browse
menu. The user is the one signed in to Airflow (the UI's JWT cookie, or an
`Authorization: Bearer` API token), resolved by Airflow's own `get_user`; what they may
do follows their rights on the `npimage_dedup` DAG, through the configured auth manager
(FAB roles, Keycloak, simple auth manager...): reading the review pages needs GET on the
DAG (Viewer and above), recording a decision needs PUT on it (User, Op, Admin).
Airflow is imported inside functions only, like the rest of npimage.orchestration.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request

from npimage.config import Settings
from npimage.orchestration.connection import NEXTPAGE_CONN_ID, airflow_dsn
from npimage.review.app import Auth, ReviewConfig, create_app

log = logging.getLogger("npimage.review")

DAG_ID = "npimage_dedup"
URL_PREFIX = "/npimage-review"


class AirflowAuth(Auth):
    """Airflow's authentication; authorisation by the user's rights on DAG npimage_dedup."""

    def __init__(self, dag_id: str = DAG_ID) -> None:
        self.dag_id = dag_id

    async def _user(self, request: Request, method: Literal["GET", "PUT"]) -> str:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
        from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

        user = await get_user(request, None, await bearer_scheme(request))
        allowed = get_auth_manager().is_authorized_dag(
            method=method, details=DagDetails(id=self.dag_id), user=user)
        if not allowed:
            need = "edit" if method == "PUT" else "read"
            raise HTTPException(403, f"{user.get_name()} may not {need} DAG {self.dag_id}: "
                                     f"ask an Airflow admin for the right role")
        return str(user.get_name())

    async def viewer(self, request: Request) -> str:
        return await self._user(request, "GET")

    async def decider(self, request: Request) -> str:
        return await self._user(request, "PUT")


def backend_dsn() -> str | None:
    """The backend's DSN from the Airflow connection (NPIMAGE_REVIEW_CONN, default
    NEXTPAGE_CONN_ID), or None when that connection is not defined."""
    conn_id = os.environ.get("NPIMAGE_REVIEW_CONN", NEXTPAGE_CONN_ID)
    try:
        return airflow_dsn(conn_id)
    except Exception as exc:  # no such connection: decisions stay in the data dir's log
        log.info("review: no backend connection %s (%s)", conn_id, exc)
        return None


def review_app() -> FastAPI:
    """The review app as Airflow's web server mounts it (data dir: NPIMAGE_DATA_DIR)."""
    config = ReviewConfig(data_dir=Settings().data_dir.resolve(), origin="airflow",
                          backend=backend_dsn)
    return create_app(config, AirflowAuth())


def plugin_class() -> type:
    """The AirflowPlugin subclass that mounts the app and links it from the UI."""
    from airflow.plugins_manager import AirflowPlugin

    attrs: dict[str, Any] = {
        "name": "npimage_review",
        "fastapi_apps": [{"app": review_app(), "url_prefix": URL_PREFIX,
                          "name": "npimage review"}],
        "external_views": [{"name": "Image review", "href": f"{URL_PREFIX}/",
                            "category": "browse", "url_route": "npimage-review",
                            "destination": "nav"}],
        "__module__": __name__,
    }
    return type("NpimageReviewPlugin", (AirflowPlugin,), attrs)
