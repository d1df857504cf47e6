"""Keep secrets out of files, XCom values and logs: DSNs are recorded without passwords.

A backend or source may be given as a URL with a password (`postgresql://u:pw@host/db`),
a libpq key=value string (`host=h password=pw`), a reference to an Airflow connection
(`airflow-conn:<conn_id>`) or to an environment variable (`env:<NAME>`). Only the last two
are safe to store; `redact_dsn` turns the others into a form without the password, for
every place a DSN is written down (context.json, XCom, logs, error messages).
"""

from __future__ import annotations

import logging
import re

MASK = "***"
#: user:password@ in a URL (the password is everything up to the last @ of the netloc).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*@")
#: password=... in a libpq key=value string or a URL query.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)",
                          re.IGNORECASE)


def redact_dsn(text: str | None) -> str | None:
    """`text` with every DSN password replaced by ***; None stays None."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def has_password(dsn: str | None) -> bool:
    """Whether `dsn` carries a password (then it must never be stored as is)."""
    return bool(dsn) and redact_dsn(dsn) != dsn


class RedactingFilter(logging.Filter):
    """A logging filter that masks DSN passwords in every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_dsn(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
