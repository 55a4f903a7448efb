"""What `vllm-audit` accepts: its commands, their options and `--version`.

The `agent` command's options are not written here: they are derived from their one
declaration on AgentConfig (config.py, options.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path
from typing import Any

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.cli import evidence_parser
from vllm_audit_agent.cli.credentials import ENV_TOKEN, ENV_TOKEN_FILE
from vllm_audit_agent.cli.keygen import add_keygen_parser
from vllm_audit_agent.cli.run_fleet import add_fleet_parser
from vllm_audit_agent.cli.run_witness import add_witness_parser
from vllm_audit_agent.config import LEVELS, OPTIONS, AgentConfig, env_var
from vllm_audit_agent.detections.finding import SEVERITIES, SUBJECT_KINDS
from vllm_audit_agent.options import add_arguments
from vllm_audit_agent.records.export import FORMATS as EXPORT_FORMATS

PROG = "vllm-audit"
DISTRIBUTION = "vllm-audit"
#: A client looks for the agent where an agent listens by default.
DEFAULT_QUERY_ADDRESS = AgentConfig().query_address
OUTPUTS = ("json", "table")
#: Derived from the contract's TrailState (one definition): active, finished, aborted, ...
STATES = {name[len("TRAIL_STATE_"):].lower(): number
          for name, number in q.TrailState.items() if number != q.TRAIL_STATE_UNSPECIFIED}

#: The top-level help. The level names come from LEVELS (the contract's AuditLevel), never a
#: list of their own: a level added to the contract is in the help the moment it exists.
DESCRIPTION = f"""`vllm-audit`: run the agent, query it, switch the audit level.

    vllm-audit agent [--ingest-socket PATH] [--query-address H:P] [--http-address H:P] ...
    vllm-audit query health|stats
    vllm-audit query list [--model M] [--user U] [--state S] [--limit N]
    vllm-audit query get REQUEST_ID [--events]
    vllm-audit findings [--rule R] [--subject S] [--since T] [--until T]   (agent or fleet)
    vllm-audit query aggregates [--group-by tenant,user,model,day] [--since T] [--until T]
    vllm-audit set-level {'|'.join(LEVELS)}
    vllm-audit delete REQUEST_ID        (admin: the query store only; records stay)
    vllm-audit clear --confirm          (admin: every final trail of the query store)
    vllm-audit erase --user U [--tenant T] --reason R   (admin: destroys U's content keys)
    vllm-audit tail [--count N]
    vllm-audit verify PATH|--kafka-bootstrap B --public-key PEM [--allow-unsigned-tail]
                      [--anchor FILE] [--anchor-kafka B] [--witness-url URL]
                      [--witness-key PEM --require-cosignatures N]
    vllm-audit prove PATH --seq N|--trail-id ID --public-key PEM [--witness-url URL]
    vllm-audit export [--data-dir DIR] [--since T] [--until T] [--format jsonl|csv|ocsf|ecs|hec]
                      [--open-content [--content-key-dir DIR]]
    vllm-audit witness --key FILE --state-dir DIR --listen H:P --log-public-key PEM [--name N]
    vllm-audit keygen --key FILE [--public-key FILE]   (the signing key, apart from the data dir)

verify exits 0 when the chain, the Merkle tree and the log's identity are intact, covered by
checkpoints and consistent with every anchor; 1 at the first break (named on stderr, the
report on stdout as JSON); 2 when the question cannot be answered (a usage error, Kafka or a
witness unreachable within --timeout).

The client options (--address, --output, --timeout, credentials, TLS) go before or after the
subcommand. Client commands need a credential: --token, $VLLM_AUDIT_TOKEN, --token-file
($VLLM_AUDIT_TOKEN_FILE), else the local agent's admin token in its data dir (--data-dir,
$VLLM_AUDIT_DATA_DIR, default /var/lib/vllm-audit).
JSON output has the shape of the Kafka record: proto field names, every field present, enum
names, 64-bit integers as numbers; a trail's grammar proof (grammar_events) is filled from its
events, so only `query get ID --events` shows it (list and tail leave those fields out).
"""


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def _client_options(top_level: bool) -> argparse.ArgumentParser:
    """Options every client command takes, before or after its subcommand. Only the top level
    holds defaults (None: resolved later); below it SUPPRESS keeps an option given earlier."""
    default: Any = None if top_level else argparse.SUPPRESS
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("client options")
    g.add_argument("--address", default=default,
                   help=f"query address host:port of an agent or a fleet service (default: "
                        f"${env_var('query_address')}, else {DEFAULT_QUERY_ADDRESS})")
    g.add_argument("--output", "-o", choices=OUTPUTS, default=default,
                   help="json (the Kafka record's shape) or table (default: json)")
    g.add_argument("--timeout", type=float, default=default,
                   help="seconds to wait for each answer (default: 10)")
    g.add_argument("--token", default=default,
                   help=f"bearer token (default: ${ENV_TOKEN}, then --token-file)")
    g.add_argument("--token-file", type=Path, default=default,
                   help=f"file holding the bearer token (default: ${ENV_TOKEN_FILE}, else the "
                        "local agent's admin.token in --data-dir)")
    g.add_argument("--data-dir", type=Path, default=default, dest="client_data_dir",
                   help=f"a local agent's data dir, to read its admin.token (default: "
                        f"${env_var('data_dir')}, else {AgentConfig().data_dir})")
    g.add_argument("--tls-ca", type=Path, default=default,
                   help="use TLS and verify the agent against this CA (PEM)")
    g.add_argument("--tls-cert", type=Path, default=default, dest="client_tls_cert",
                   help="client certificate for mutual TLS (PEM)")
    g.add_argument("--tls-key", type=Path, default=default, dest="client_tls_key",
                   help="client key for mutual TLS (PEM)")
    g.add_argument("--tls-server-name", default=default,
                   help="name the agent's certificate carries, if not the address' host")
    return p


def _agent_parser(sub: Any) -> None:
    a = sub.add_parser(
        "agent", help="run the sidecar agent",
        description="Run the sidecar agent. A flag wins over its environment variable, which wins "
                    "over the default.")
    add_arguments(a, OPTIONS)


def build_parser() -> argparse.ArgumentParser:
    client = _client_options(top_level=False)
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, parents=[_client_options(True)],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _agent_parser(sub)
    add_witness_parser(sub)
    add_fleet_parser(sub)
    add_keygen_parser(sub)

    s = sub.add_parser("query", parents=[client], help="read the agent's trails, stats, health")
    qs = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    qs.add_parser("health", parents=[client],
                  help="the agent's health (a token of any role; probes without one ask "
                       "/healthz or grpc.health.v1, which say only SERVING)")
    qs.add_parser("stats", parents=[client], help="ingest, drops by reason, WAL, publishing")
    ls = qs.add_parser("list", parents=[client], help="trails, filtered and paginated")
    ls.add_argument("--model", default="", help="only this model")
    ls.add_argument("--user", default="", help="only this user")
    ls.add_argument("--client-request-id", default="",
                    help="only requests the client sent with this X-Request-Id")
    ls.add_argument("--state", choices=list(STATES), help="only trails in this state")
    ls.add_argument("--tenant", default="", help="only this tenant")
    ls.add_argument("--backend", default="",
                    help="only trails whose grammar this structured-output backend compiled")
    ls.add_argument("--limit", type=int, default=50, help="at most N trails (default: 50)")
    ag = qs.add_parser("aggregates", parents=[client],
                       help="requests, tokens, errors and cost by tenant, user, model, day")
    ag.add_argument("--group-by", default="", metavar="KEYS",
                    help="comma-separated: tenant, user, model, day (default: one row)")
    for name in ("tenant", "user", "model"):
        ag.add_argument(f"--{name}", default="", help=f"only this {name}")
    ag.add_argument("--since", default="", help="trails created at or after (ISO 8601 or unix s)")
    ag.add_argument("--until", default="", help="trails created before (ISO 8601 or unix s)")
    g = qs.add_parser("get", parents=[client], help="one trail")
    g.add_argument("request_id")
    g.add_argument("--events", action="store_true",
                   help="include the trail's events (read page by page)")

    s = sub.add_parser("findings", parents=[client],
                       help="the detection rules' findings, newest first (an agent with "
                            "--detections, or a fleet service: its own and the pods')")
    s.add_argument("--rule", default="", help="only this rule (e.g. high_call_rate)")
    s.add_argument("--subject", default="",
                   help="only this subject (a user, an API key's SHA-256, an address, ...)")
    s.add_argument("--subject-kind", default="", choices=["", *SUBJECT_KINDS],
                   help="only subjects of this kind")
    s.add_argument("--severity", default="", choices=["", *SEVERITIES], help="only this severity")
    s.add_argument("--tenant", default="", help="only this tenant")
    s.add_argument("--since", default="", help="windows ending at or after (ISO 8601 or unix s)")
    s.add_argument("--until", default="", help="windows ending before (ISO 8601 or unix s)")
    s.add_argument("--limit", type=int, default=50, help="at most N findings (default: 50)")

    s = sub.add_parser("set-level", parents=[client], help="switch the audit level of every hook")
    s.add_argument("level", choices=list(LEVELS))

    s = sub.add_parser("delete", parents=[client],
                       help="delete one final trail from the agent's query store (admin; the "
                            "record log keeps its records)")
    s.add_argument("request_id")
    s = sub.add_parser("clear", parents=[client],
                       help="delete every final trail from the agent's query store (admin; the "
                            "record log keeps their records)")
    s.add_argument("--confirm", action="store_true", required=True,
                   help="required: says you mean it")
    s = sub.add_parser("erase", parents=[client],
                       help="erase one user's content (admin): their content keys are destroyed "
                            "and a signed erasure record written; records and chain stay")
    s.add_argument("--user", required=True)
    s.add_argument("--tenant", default="", help="the user's tenant (default: none)")
    s.add_argument("--reason", required=True,
                   help="why (a ticket, the request's basis); kept in the erasure record")

    s = sub.add_parser("tail", parents=[client],
                       help="the stored final trails, then each new one as it becomes final")
    s.add_argument("--count", type=int, default=0, help="stop after N trails (default 0: never)")

    s = sub.add_parser("replay", parents=[client],
                       help="prove a trail's tokens against its recorded grammar (needs vLLM)")
    s.add_argument("trail", help="a trail file (`query get ID --events`), a record or export "
                                 "file, or a trail id (read from the agent, or from Kafka)")
    s.add_argument("--trail-id", help="which trail of an export file (default: its only one)")
    s.add_argument("--kafka-bootstrap",
                   help="read the trail id's newest record from <prefix>.requests in Kafka")
    s.add_argument("--topic-prefix", default="vllm-audit")
    s.add_argument("--model", required=True, help="the model directory (its tokenizer)")
    evidence_parser.add_arguments(sub)
    e = sub.add_parser("export", help="a time range of the record log as JSONL, CSV, OCSF, ECS "
                                      "or Splunk HEC")
    e.add_argument("--data-dir", type=Path, help="the agent's data dir (default: env or config)")
    e.add_argument("--archive", metavar="s3://BUCKET/PREFIX",
                   help="read the WORM archive instead of the data dir")
    e.add_argument("--archive-endpoint", metavar="URL",
                   help="its S3 endpoint (default: $VLLM_AUDIT_ARCHIVE_ENDPOINT, else AWS S3)")
    e.add_argument("--since", help="ISO 8601 or unix time (recorded time, inclusive)")
    e.add_argument("--until", help="ISO 8601 or unix time (recorded time, exclusive)")
    e.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl",
                   help="jsonl: the chained records (verifiable); csv: a table of the requests; "
                        "ocsf, ecs, hec: one JSON line per record for a SIEM (OCSF 1.7.0 events, "
                        "ECS documents, Splunk HEC events)")
    e.add_argument("--output-file", type=Path, help="file to write (default: stdout)")
    e.add_argument("--open-content", action="store_true",
                   help="open sealed prompts and outputs with the content keys (erased ones "
                        "say so); the records then differ from the hashed ones: for reading, "
                        "not for verify")
    e.add_argument("--content-key-dir", type=Path,
                   help="the content keys (default: $VLLM_AUDIT_CONTENT_KEY_DIR, else "
                        "<data dir>/content-keys)")
    st = sub.add_parser("stats", help="the engine-stats time series")
    sts = st.add_subparsers(dest="what", required=True, metavar="WHAT")
    se = sts.add_parser("export", help="engine-stats snapshots in a time range as CSV or JSONL, "
                                       "from the agent's disk or the Kafka stream")
    se.add_argument("--data-dir", type=Path,
                    help="the agent's data dir, its engine-stats/ history (default: env or config)")
    se.add_argument("--kafka-bootstrap", help="read <prefix>.engine-stats from Kafka instead")
    se.add_argument("--topic-prefix", default="vllm-audit")
    se.add_argument("--since", help="ISO 8601 or unix time (snapshot time, inclusive)")
    se.add_argument("--until", help="ISO 8601 or unix time (snapshot time, exclusive)")
    se.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    se.add_argument("--output-file", type=Path, help="file to write (default: stdout)")
    return p
