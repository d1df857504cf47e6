"""The Airflow-facing glue, in one place: everything npimage knows about Airflow.

- connection: the connection id `nextpage_backend` (defined here only), the
  `airflow-conn:<id>` references that carry it through XCom without a secret, and their
  resolution into a libpq DSN by the postgres provider's hook;
- locks: the client's run lock as the DAG takes it (is the holding DAG run still alive?);
- dag: the DAG's run context from its params, and one TaskFlow task per declared stage
  (npimage.stages.STAGES), so that dags/*.py stay thin;
- local: `airflow dags test` of the DAG for `npimage demo --airflow`.

Nothing here imports Airflow at import time (the imports sit inside the functions), and
the rest of the library never imports Airflow at all: it only meets `airflow-conn:`
references, which it hands to `connection.resolve_db`.
"""
