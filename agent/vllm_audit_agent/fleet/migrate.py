"""What a fleet store made by an earlier schema gets when it opens: `CREATE TABLE IF NOT
EXISTS` leaves an existing table as it was, so each projection it lacks is added and then
built for the parts already stored (`MATERIALIZE PROJECTION`, a background mutation: the
store serves at once, queries use the projection part by part as it is built).

Not migrated: the granule size (`index_granularity_bytes` is fixed when a table is created):
an older store reads a page of records slower than a new one, and answers the same.
"""

from __future__ import annotations

from vllm_audit_agent.fleet.backend import Backend
from vllm_audit_agent.fleet.schema import PROJECTIONS


def migrate(backend: Backend, database: str) -> list[str]:
    """Adds the records table's missing projections; their names."""
    rows = backend.rows(
        "SELECT create_table_query AS q FROM system.tables WHERE database = {db:String} "
        "AND name = 'records'", {"db": database})
    created = str(rows[0]["q"]) if rows else ""
    missing = [name for name in PROJECTIONS if f"PROJECTION {name} " not in created]
    table = f"{database}.records"
    if missing:
        # A Replacing table refuses ADD PROJECTION unless merges rebuild its projections.
        backend.command(f"ALTER TABLE {table} MODIFY SETTING "
                        "deduplicate_merge_projection_mode = 'rebuild'")
    for name in missing:
        backend.command(f"ALTER TABLE {table} ADD PROJECTION IF NOT EXISTS {name} "
                        f"({PROJECTIONS[name]})")
        backend.command(f"ALTER TABLE {table} MATERIALIZE PROJECTION {name}")
    return missing
