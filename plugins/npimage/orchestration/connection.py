"""The backend's Airflow connection: its id, the references to it, their resolution.

A DAG param `source` or `backend` set to `nextpage` names the Airflow connection
NEXTPAGE_CONN_ID. In XCom and run files it travels as the reference
`airflow-conn:nextpage_backend`, never as a URL with a password; a task resolves it into
a libpq DSN only when it connects.

The postgres provider's hook resolves the connection (metadata database, secrets backend
or AIRFLOW_CONN_* variable); the libpq DSN is then built here from its fields, because
the hook's own get_conn() and get_uri() do not fit when psycopg 3 is installed beside
SQLAlchemy 2 (as with Airflow 3): get_conn() returns a psycopg 3 connection and get_uri()
a `postgresql+psycopg://` URL that libpq refuses, without extras such as sslmode.
"""

from __future__ import annotations

#: The Airflow connection of the NextPage backend (the one definition of the id).
NEXTPAGE_CONN_ID = "nextpage_backend"
#: What a DAG param says to mean that connection.
NEXTPAGE = "nextpage"
#: A source or backend naming an Airflow connection instead of a URL (no secret in XCom).
AIRFLOW_CONN_PREFIX = "airflow-conn:"
#: A source or backend naming an environment variable that holds the DSN (no secret stored).
ENV_PREFIX = "env:"

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


def conn_ref(value: str, conn_id: str = NEXTPAGE_CONN_ID) -> str:
    """`nextpage` as the reference `airflow-conn:<conn_id>`; any other value unchanged."""
    return f"{AIRFLOW_CONN_PREFIX}{conn_id}" if value == NEXTPAGE else value


def is_backend_url(source: str) -> bool:
    """Whether a source names a PostgreSQL backend (URL, Airflow connection or env: reference)."""
    return source.startswith(("postgresql://", "postgres://", AIRFLOW_CONN_PREFIX, ENV_PREFIX))


def resolve_db(url: str) -> str:
    """A libpq DSN for a postgresql:// URL, an `airflow-conn:<conn_id>` or `env:<NAME>`."""
    if url.startswith(AIRFLOW_CONN_PREFIX):
        return airflow_dsn(url.removeprefix(AIRFLOW_CONN_PREFIX))
    if url.startswith(ENV_PREFIX):
        import os

        from npimage.errors import InputError

        name = url.removeprefix(ENV_PREFIX)
        if not os.environ.get(name):
            raise InputError(f"{url}: environment variable {name} is not set",
                             hint="export it, or pass the DSN itself")
        return os.environ[name]
    return url


def airflow_dsn(conn_id: str = NEXTPAGE_CONN_ID) -> str:
    """libpq DSN of Airflow connection `conn_id`: host, port, login, password, schema (the
    database) and the libpq extras (sslmode, options, connect_timeout, ...)."""
    import psycopg2.extensions
    from airflow.providers.postgres.hooks.postgres import PostgresHook  # inside Airflow only

    conn = PostgresHook(postgres_conn_id=conn_id).get_connection(conn_id)
    params = {"host": conn.host, "port": conn.port, "user": conn.login,
              "password": conn.password, "dbname": conn.schema}
    params.update({k: v for k, v in conn.extra_dejson.items() if k in LIBPQ_EXTRAS})
    return str(psycopg2.extensions.make_dsn(**{k: v for k, v in params.items()
                                               if v not in (None, "")}))
