"""The ClickHouse the fleet store talks to: chDB in-process (the default: a data directory on a
volume, one process per directory — chDB locks it) or a ClickHouse server through
clickhouse-connect (for scale: several fleet replicas, a cluster). Both take the same SQL with
server-side parameters (`{name:Type}`) and the same Arrow tables for inserts, so the store has
one SQL text for both.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import pyarrow as pa


class Backend(Protocol):
    def command(self, sql: str) -> None: ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The result rows, as column name -> value."""
        ...

    def insert(self, table: str, data: pa.Table) -> None: ...

    def close(self) -> None: ...


class ChdbBackend:
    """ClickHouse in this process on `path`. chDB's session is not safe across threads: one
    lock serialises its calls (the consumer's inserts and the API's reads alike)."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self._session = session.Session(str(path))
        self._lock = threading.Lock()
        self._closed = False

    def command(self, sql: str) -> None:
        with self._lock:
            self._session.query(sql)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self._session.query(sql, "ArrowTable", params={
                name: _param_text(value) for name, value in (params or {}).items()})
        table: pa.Table = result
        return list(table.to_pylist())

    def insert(self, table: str, data: pa.Table) -> None:
        # chDB's Python() table function reads the variable of that name in this frame.
        rows = data  # noqa: F841 - read by name by the query below
        with self._lock:
            self._session.query(f"INSERT INTO {table} SELECT * FROM Python(rows)")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()


def _param_text(value: Any, nested: bool = False) -> str:
    """A parameter as ClickHouse reads it for its `{name:Type}` (clickhouse-connect does this
    for the server): lists as arrays, tuples as tuples, strings inside them quoted."""
    if isinstance(value, tuple):
        return "(" + ",".join(_param_text(item, True) for item in value) + ")"
    if isinstance(value, list):
        return "[" + ",".join(_param_text(item, True) for item in value) + "]"
    if isinstance(value, str) and nested:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


class ServerBackend:
    """A ClickHouse server (or a cluster's load balancer) over HTTP."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        parsed = urlparse(url)
        secure = parsed.scheme in ("clickhouses", "https")
        self._client = clickhouse_connect.get_client(
            host=parsed.hostname or "localhost", port=parsed.port or (8443 if secure else 8123),
            username=unquote(parsed.username or "default"), password=unquote(parsed.password or ""),
            secure=secure)

    def command(self, sql: str) -> None:
        self._client.command(sql)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self._client.query(sql, parameters=dict(params or {})).named_results())

    def insert(self, table: str, data: pa.Table) -> None:
        self._client.insert_arrow(table, data)

    def close(self) -> None:
        self._client.close()


def open_backend(target: str) -> Backend:
    """`clickhouse://user:password@host:8123` (or clickhouses://) is a server; anything else a
    chDB data directory (`chdb:///path` or a plain path)."""
    if target.startswith(("clickhouse://", "clickhouses://", "http://", "https://")):
        return ServerBackend(target)
    path = target.removeprefix("chdb://")
    return ChdbBackend(Path(path))
