"""Airflow plugin: the npimage review application inside Airflow's own web server.

Mounts the FastAPI app at /npimage-review and adds "Image review" to the UI's Browse
menu (shown in the Airflow UI's frame). Sign-in and roles are Airflow's
(npimage.review.airflow_auth). docs/REVIEW.md says how to use it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from npimage.review.airflow_auth import URL_PREFIX, review_app


class NpimageReviewPlugin(AirflowPlugin):
    name = "npimage_review"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": review_app(), "url_prefix": URL_PREFIX, "name": "npimage review"}]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Image review", "href": f"{URL_PREFIX}/", "category": "browse",
         "url_route": "npimage-review", "destination": "nav"}]
