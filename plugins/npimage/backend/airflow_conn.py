"""The backend DSN from an Airflow connection (default id `nextpage_backend`).

The postgres provider's hook resolves the connection (metadata database, secrets backend
or AIRFLOW_CONN_* variable); the libpq DSN is then built here from its fields, because
the hook's own get_conn() and get_uri() do not fit when psycopg 3 is installed beside
SQLAlchemy 2 (as with Airflow 3): get_conn() returns a psycopg 3 connection and get_uri()
a `postgresql+psycopg://` URL that libpq refuses, without extras such as sslmode.
"""

from __future__ import annotations

import psycopg2.extensions

DEFAULT_CONN_ID = "nextpage_backend"

#: libpq connection parameters that a connection's extras may carry (others are ignored).
LIBPQ_EXTRAS = frozenset({
    "application_name", "channel_binding", "client_encoding", "connect_timeout",
    "fallback_application_name", "gssencmode", "hostaddr", "keepalives", "keepalives_count",
    "keepalives_idle", "keepalives_interval", "krbsrvname", "load_balance_hosts", "options",
    "passfile", "requirepeer", "service", "ssl_max_protocol_version",
    "ssl_min_protocol_version", "sslcert", "sslcompression", "sslcrl", "sslcrldir", "sslkey",
    "sslmode", "sslpassword", "sslrootcert", "sslsni", "target_session_attrs",
    "tcp_user_timeout",
})


def airflow_dsn(conn_id: str = DEFAULT_CONN_ID) -> str:
    """libpq DSN of Airflow connection `conn_id`: host, port, login, password, schema (the
    database) and the libpq extras (sslmode, options, connect_timeout, ...)."""
    # only inside Airflow: importing npimage stays light
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_connection(conn_id)
    params = {"host": conn.host, "port": conn.port, "user": conn.login,
              "password": conn.password, "dbname": conn.schema}
    params.update({k: v for k, v in conn.extra_dejson.items() if k in LIBPQ_EXTRAS})
    return psycopg2.extensions.make_dsn(**{k: v for k, v in params.items()
                                           if v not in (None, "")})
