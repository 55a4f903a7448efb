"""The arguments of `verify` and `prove` (evidence_commands.py runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def path_or_archive(text: str) -> Path | str:
    """A file or directory, or an archive's s3://BUCKET/PREFIX kept as written (a Path would
    fold its `//`)."""
    return text.strip() if text.strip().startswith("s3://") else Path(text)


def add_arguments(sub: Any) -> None:
    """The `verify` and `prove` subcommands."""
    v = sub.add_parser("verify", help="check a record log: its chain, Merkle tree and identity, "
                                      "against anchors and witnesses")
    v.add_argument("path", nargs="?", type=path_or_archive,
                   help="record log directory (<data_dir>/records), JSONL export file, or the "
                        "WORM archive s3://BUCKET/PREFIX (read straight from the object storage)")
    v.add_argument("--archive-endpoint", metavar="URL",
                   help="the S3 endpoint of an S3-compatible server holding the archive "
                        "(default: $VLLM_AUDIT_ARCHIVE_ENDPOINT, else AWS S3 or $AWS_ENDPOINT_URL)")
    v.add_argument("--kafka-bootstrap", help="read the logs from Kafka instead (each log on the "
                                             "topics is verified on its own)")
    v.add_argument("--fleet-store", metavar="DIR|URL",
                   help="read the logs from the fleet service's store instead (its chDB "
                        "directory, while no fleet service has it open, or its ClickHouse "
                        "server URL); each log is verified on its own")
    v.add_argument("--database", default="vllm_audit", help="the fleet store's database")
    v.add_argument("--log-id", action="append", metavar="ID",
                   help="with --fleet-store: only this log (repeatable; default every log)")
    v.add_argument("--since", help="with a record log directory or --fleet-store: records "
                                   "the agent wrote at or after (ISO 8601 or unix time); a "
                                   "directory's older segments are skipped by their footers")
    v.add_argument("--until", help="with a record log directory or --fleet-store: records "
                                   "written before (ISO 8601 or unix time); read on to the "
                                   "checkpoint after them")
    v.add_argument("--topic", action="append",
                   help="Kafka topic (repeatable); default every topic of the chain: <prefix>."
                        "requests, .checkpoints and .access")
    _common(v)
    v.add_argument("--allow-unsigned-tail", action="store_true",
                   help="records after the last checkpoint (and, with "
                        "--require-cosignatures, after the last witnessed one) are reported, "
                        "not a failure: a live log always has a few")
    v.add_argument("--anchor", action="append", type=Path, metavar="FILE",
                   help="a checkpoint (signed note) held elsewhere: the log must contain it "
                        "(repeatable)")
    v.add_argument("--anchor-kafka", metavar="BOOTSTRAP",
                   help="take the newest checkpoint of each log on <prefix>.checkpoints as an "
                        "anchor")
    v.add_argument("--require-cosignatures", type=int, default=0, metavar="N",
                   help="fail unless N of the --witness-key witnesses cosigned the checkpoint "
                        "covering the last request or access record")
    p = sub.add_parser("prove", help="write an offline proof bundle for one record")
    p.add_argument("path", type=Path, help="record log directory (<data_dir>/records) or JSONL "
                                           "export file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, help="the record's seq")
    which.add_argument("--trail-id", help="the newest record of this trail")
    p.add_argument("--output-file", type=Path, help="file to write (default: stdout)")
    _common(p)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic-prefix", default="vllm-audit")
    parser.add_argument("--public-key", type=Path, required=True, action="append",
                        help="the agent's Ed25519 public key (PEM, raw 32 bytes or hex); "
                             "repeatable: each log is checked with the key its genesis and "
                             "checkpoints name (a fleet's keys, one per pod)")
    parser.add_argument("--witness-url", action="append", metavar="URL",
                        help="a witness: its newest cosigned checkpoint of each log is an anchor "
                             "(repeatable)")
    parser.add_argument("--witness-key", action="append", type=Path, metavar="PEM",
                        help="a witness's public key: its cosignatures count (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="deadline for reading Kafka or asking a witness")
