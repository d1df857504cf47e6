"""Review and decide: groups of duplicates, pair comparison, reviewers' decisions.

- `store`: the decisions log (append-only Parquet under the data dir), read by the merge
  step, exposed by the warehouse as the view `decisions`, copied to the backend;
- `data`: groups (connected components of same/retouched pairs) and the review queue;
- `pictures`: full-size pictures, difference overlay, which image to keep and why;
- `app`: the FastAPI application (no Airflow import); `auth`/`serve`: the standalone
  server (`npimage review`). The Airflow glue is `npimage.orchestration.review`, used
  by the plugin `plugins/npimage_review_plugin.py`. See docs/REVIEW.md.
"""
