"""npimage: offline near-duplicate image detection for product catalogues.

The library knows nothing of Airflow: every stage is a plain function over paths and
small values, so the CLI (`npimage run`) and the DAG (`dags/npimage_dedup.py`) call the
same code.
"""

__version__ = "0.1.0"
