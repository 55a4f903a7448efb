"""The fleet store's tables, one SQL text for chDB and a ClickHouse server.

`records`: every record of every log (requests, access, genesis, checkpoints, seals,
cosignatures, level changes), one row per (log_id, seq):
  - a column for every field an audit query filters or sums on (tenant, user, model, state,
    client_request_id, trail_id, revision — `event_id` is an ALIAS of trail_id/revision, stored
    nowhere —, the record's time, tokens, status, errors, type), and the canonical record bytes
    (`record`, ZSTD) for proofs and exports: `orjson.loads(record)` is the record, its bytes
    are what the chain hashed;
  - ReplacingMergeTree ordered by (log_id, seq): a re-delivered record (the consumer is
    at-least-once) collapses at merge time; reads never show one before that either: trail
    reads keep the newest revision per trail (`argMax(…, revision)`, which folds identical rows)
    and record reads take `LIMIT 1 BY log_id, seq` (cheaper than FINAL on a 10M-row table:
    `scripts/benchmarks.py fleet` measures both);
  - monthly partitions on when the agent wrote the record (`recorded`, its `recorded_unix_ms`,
    which every chained record carries), so TTLs drop whole parts. Retention counts from
    there, not from `ts` (the request's time as the engine's clock gave it): an event stamped
    with a wrong clock (1970, or years ahead) would otherwise be deleted at the first TTL merge
    right after it was stored and acknowledged — or kept for ever;
  - projections ordered by (user, ts) and by (tenant, ts) with the columns a trail listing
    reads: "one user's (or tenant's) newest 50 over 30 days" reads that user's newest rows
    only, in reverse order (DESIGN.md: 43 ms p99 → 7.4 ms at 1M rows; a bloom filter does not
    help: every granule holds every user); a store made before a projection gets it when it
    opens (migrate.py); bloom-filter skip indexes for the point look-ups (trail_id,
    client_request_id, request_id), which a (log_id, seq) order scatters over every granule;
  - granules of ~256 KiB (`GRANULE_BYTES`), not ClickHouse's 10 MiB: a page's records are read
    by (log_id, seq), each from its own granule, decompressed from the granule's start;
  - TTLs per retention class (`Retention`): content (a request record whose bytes hold prompt or
    output text: its `record` column is emptied, the summary columns stay), metadata (request
    and access rows deleted), evidence (genesis, checkpoints, seals, cosignatures, level records
    — kept longest: they prove what the shorter classes said). 0 keeps a class for ever.

`logs`: each log's verification state (the verifier's head, tree and findings), the newest row
per log wins (ReplacingMergeTree on `updated_ms`), so a restarted consumer goes on where the
last one stopped.

A cluster (not exercised by the tests; the same SQL): create the tables ON CLUSTER with
`ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/records', '{replica}')`
and query through `CREATE TABLE records_all AS records ENGINE = Distributed(cluster, db,
records, cityHash64(log_id))`: sharding by log_id keeps each log on one shard, where the
replacing merge and the per-log reads stay local.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The trail fields a listing filters on (the TrailQuery fields) and the columns they read.
FILTER_COLUMNS = {"tenant": "tenant", "user": "user", "model": "model",
                  "client_request_id": "client_request_id"}
EVIDENCE_TYPES = ("genesis", "checkpoint", "seal", "cosignature", "level")


@dataclass(frozen=True)
class Retention:
    """Days each class is kept (0: for ever)."""
    content_days: int = 30
    metadata_days: int = 180
    evidence_days: int = 400


DEFAULT_RETENTION = Retention()


def _ttl(retention: Retention) -> tuple[str, str]:
    """(the record column's TTL, the table's TTL clause)."""
    day = "toDateTime(recorded) + INTERVAL {} DAY"
    column = ""
    if retention.content_days:
        keep = retention.metadata_days or 36500
        column = (f" TTL if(has_content = 1, {day.format(retention.content_days)}, "
                  f"{day.format(keep)})")
    rules = []
    if retention.evidence_days:
        rules.append(f"{day.format(retention.evidence_days)} DELETE")
    if retention.metadata_days:
        rules.append(f"{day.format(retention.metadata_days)} DELETE WHERE type IN "
                     "('request', 'access')")
    return column, ("TTL " + ", ".join(rules)) if rules else ""


#: A listing's trail columns (what `FleetStore.list_trails` reads) in an order of its own, so
#: "newest first" for one user or tenant reads only that user's or tenant's newest rows.
_LISTED = ("type, tenant, user, model, state, trail_id, revision, log_id, seq, "
           "client_request_id, ts")
PROJECTIONS = {"by_user": f"SELECT {_LISTED} ORDER BY user, ts",
               "by_tenant": f"SELECT {_LISTED} ORDER BY tenant, ts"}
#: Granules of about 256 KiB (ClickHouse's default: 10 MiB): reading one record (a ~3 KB
#: `record` value) decompresses its granule from the start, so a page of 50 records read by
#: (log_id, seq) costs 50 granules — ~13 MiB at this size, 40 times that at the default. The
#: price: ~4 bytes of marks per record.
GRANULE_BYTES = 1 << 18


def create_statements(database: str, retention: Retention = DEFAULT_RETENTION) -> list[str]:
    column_ttl, table_ttl = _ttl(retention)
    projections = ",\n    ".join(f"PROJECTION {name} ({body})"
                                  for name, body in PROJECTIONS.items())
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.records (
    log_id LowCardinality(String),
    seq UInt64,
    type LowCardinality(String),
    ts DateTime64(3) CODEC(Delta, ZSTD(1)),
    recorded DateTime64(3) CODEC(Delta, ZSTD(1)),
    trail_id String CODEC(ZSTD(1)),
    revision UInt32,
    event_id String ALIAS concat(trail_id, '/', toString(revision)),
    tenant LowCardinality(String),
    user String CODEC(ZSTD(1)),
    model LowCardinality(String),
    state LowCardinality(String),
    client_request_id String CODEC(ZSTD(1)),
    request_id String CODEC(ZSTD(1)),
    status_code UInt16,
    is_error UInt8,
    input_tokens UInt32,
    output_tokens UInt32,
    has_content UInt8,
    record String CODEC(ZSTD(3)){column_ttl},
    INDEX trail_idx trail_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX client_request_idx client_request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX request_idx request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX tenant_idx tenant TYPE set(256) GRANULARITY 4,
    INDEX model_idx model TYPE set(256) GRANULARITY 4,
    {projections}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(recorded)
ORDER BY (log_id, seq)
{table_ttl}
SETTINGS deduplicate_merge_projection_mode = 'rebuild', index_granularity_bytes = {GRANULE_BYTES}""",
        f"""CREATE TABLE IF NOT EXISTS {database}.logs (
    log_id String,
    updated_ms Int64,
    head_seq UInt64,
    status LowCardinality(String),
    state String
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY log_id""",
    ]


#: The records table's columns in insert order (everything but the ALIAS).
RECORD_COLUMNS = ("log_id", "seq", "type", "ts", "recorded", "trail_id", "revision", "tenant", "user",
                  "model", "state", "client_request_id", "request_id", "status_code",
                  "is_error", "input_tokens", "output_tokens", "has_content", "record")
LOG_COLUMNS = ("log_id", "updated_ms", "head_seq", "status", "state")
