"""Airflow plugin: the npimage review application inside Airflow's own web server.

Mounts the FastAPI app at /npimage-review and adds "Image review" to the UI's Browse
menu (shown in the Airflow UI's frame). Sign-in and roles are Airflow's; the glue lives
in npimage.orchestration.review. docs/REVIEW.md says how to use it.
"""

from __future__ import annotations

from npimage.orchestration.review import plugin_class

NpimageReviewPlugin = plugin_class()
