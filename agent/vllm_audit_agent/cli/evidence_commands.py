"""`verify` and `prove`: check what the agent wrote against its key and against anchors held
elsewhere, and write a proof bundle for one record. They read files and Kafka, never the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from vllm_audit_agent.cli.output import dumps
from vllm_audit_agent.cli.parser import PROG
from vllm_audit_agent.records.entry import TOPICS

# Imported when the command runs (see offline_commands.py): the others start without them.


def _payloads_of_path(path: Path | str, endpoint: str | None = None) -> list[bytes]:
    if isinstance(path, str):  # s3://BUCKET/PREFIX: the WORM archive
        from vllm_audit_agent.archive.reader import archive_payloads, open_archive
        return list(archive_payloads(open_archive(path, archive_endpoint(endpoint))))
    from vllm_audit_agent.records.verify import path_payloads
    return list(path_payloads(path))


def _path_source(path: Path | str, endpoint: str | None) -> Callable[[], Iterable[bytes]]:
    """What reads a path's records, oldest first, each time it is called: a record log
    directory is streamed (never held whole in memory), an archive or a file is read once."""
    if isinstance(path, Path) and path.is_dir():
        from vllm_audit_agent.records.verify import path_payloads
        return lambda: path_payloads(path)
    payloads = _payloads_of_path(path, endpoint)
    return lambda: payloads


def _range_source(args: argparse.Namespace, stats: list[Any]) -> Callable[[], Iterable[bytes]]:
    """What reads a log directory's records from `--since` (by its segments' footers: see
    records/range_read.py) to the checkpoint after `--until`; each pass appends its
    RangeStats to `stats`."""
    from vllm_audit_agent.records.export import parse_time
    from vllm_audit_agent.records.range_read import RangeStats, read_since, through_checkpoint_after

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if since is not None and until is not None and until <= since:
        raise ValueError("--until must be after --since")

    def read() -> Iterable[bytes]:
        stats.append(RangeStats())
        return through_checkpoint_after(read_since(args.path, since, stats[-1]), until)
    return read


def archive_endpoint(given: str | None) -> str | None:
    """The flag, else the agent's variable; None lets boto3 choose (AWS, or AWS_ENDPOINT_URL)."""
    import os

    from vllm_audit_agent.config import env_var
    return given or os.environ.get(env_var("archive_endpoint")) or None


def _kafka(args: argparse.Namespace, topics: list[str]) -> list[bytes]:
    from vllm_audit_agent.records.verify import kafka_payloads
    return asyncio.run(kafka_payloads(args.kafka_bootstrap or args.anchor_kafka, topics,
                                      timeout=args.timeout))


def _log_ids(payloads: Iterable[bytes]) -> list[str]:
    seen: dict[str, None] = {}
    for payload in payloads:
        with_id = orjson.loads(payload).get("log_id")
        if with_id:
            seen.setdefault(with_id)
    return list(seen)


def _key_for(payloads: Iterable[bytes], keys: list[Any]) -> Any:
    """The key a log names (its genesis's public key, its checkpoints' key id), else the
    first given: a wrong key is then reported as a bad signature."""
    from vllm_audit_agent.records.chain import key_id, raw_public_key

    by_raw = {raw_public_key(k).hex(): k for k in keys}
    by_id = {key_id(k): k for k in keys}
    for payload in payloads:
        record = orjson.loads(payload)
        named = by_raw.get(record.get("public_key", "")) or by_id.get(record.get("key_id", ""))
        if named is not None:
            return named
    return keys[0]


def _anchors(args: argparse.Namespace, key: Any, log_ids: list[str], quiet: bool = False
             ) -> list[Any]:
    """Anchors whose log signature verifies with `key` (`quiet`: others are skipped, not an
    error — several keys were given, each anchor is some log's)."""
    from vllm_audit_agent.records import anchors

    found = anchors.from_files(getattr(args, "anchor", None) or [], key, quiet)
    for url in args.witness_url or []:
        found += anchors.from_witness(url, log_ids, key, args.timeout, quiet)
    if getattr(args, "anchor_kafka", None):
        topic = f"{args.topic_prefix}.{TOPICS['checkpoint']}"
        found += anchors.from_checkpoint_records(_kafka(args, [topic]), key,
                                                 f"Kafka topic {topic}", quiet, log_ids)
    return found


def _tree_check(args: argparse.Namespace, key: Any, anchors: list[Any]) -> Any:
    from vllm_audit_agent.records.chain import load_public_key
    from vllm_audit_agent.records.tree_check import TreeCheck

    witness_keys = [load_public_key(p) for p in args.witness_key or []]
    if args.require_cosignatures > len(witness_keys):
        raise ValueError(f"--require-cosignatures {args.require_cosignatures} needs as many "
                         f"--witness-key (given {len(witness_keys)})")
    check = TreeCheck(key, anchors, witness_keys, args.require_cosignatures)
    check.allow_unwitnessed_tail = args.allow_unsigned_tail
    return check


def _print_break(report: Any, log: str = "") -> None:
    b = report.broken
    where = f" (log {log})" if log else ""
    print(f"{PROG} verify: BROKEN{where} at seq {b.seq}: {b.reason} ({b.detail})",
          file=sys.stderr)


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0: intact (every log); 1: a break, named; 2: the question cannot be answered."""
    from vllm_audit_agent.records.chain import load_public_key
    from vllm_audit_agent.records.verify import split_by_log, verify_chain

    sources = [args.path is not None, args.kafka_bootstrap is not None,
               getattr(args, "fleet_store", None) is not None]
    if sum(sources) != 1:
        raise ValueError("verify needs exactly one of PATH, --kafka-bootstrap or --fleet-store")
    keys = [load_public_key(path) for path in args.public_key]
    if args.path is not None:
        ranged = getattr(args, "since", None) or getattr(args, "until", None)
        if ranged and not (isinstance(args.path, Path) and args.path.is_dir()):
            raise ValueError("--since and --until take a record log directory or --fleet-store")
        stats: list[Any] = []  # the range read of the last pass (the verify's)
        payloads = _range_source(args, stats) if ranged else _path_source(args.path,
                                                                          args.archive_endpoint)
        key = _key_for(payloads(), keys)
        # Log ids are only asked of witnesses and Kafka anchors: else not read for them.
        anchors = _anchors(args, key, _log_ids(payloads())
                           if args.witness_url or getattr(args, "anchor_kafka", None) else [])
        # A log directory and an archive (its segments) must start at the genesis or a seal;
        # a range starts where it starts (checked from its first checkpoint, as an export).
        whole_log = not ranged and (isinstance(args.path, str) or args.path.is_dir())
        report = verify_chain(payloads(), key, args.allow_unsigned_tail,
                              _tree_check(args, key, anchors), sealed_start=whole_log)
        if stats:
            report.notes.extend(stats[-1].notes())
        sys.stdout.write(dumps(report.to_dict()) + "\n")
        if report.broken is not None:
            _print_break(report)
            return 1
        print(f"{PROG} verify: intact: {report.records} records, seq {report.first_seq}.."
              f"{report.last_seq}, {report.checkpoints} checkpoints, tree size "
              f"{report.tree_size} of log {report.log_id or '(none)'}"
              f"{f', {report.anchors_checked} anchors matched' if report.anchors_checked else ''}",
              file=sys.stderr)
        return 0
    if args.kafka_bootstrap is None:
        return _verify_logs(args, keys, _fleet_logs(args), ordered=True)
    topics = args.topic or [f"{args.topic_prefix}.{t}" for t in dict.fromkeys(TOPICS.values())]
    return _verify_logs(args, keys, split_by_log(_kafka(args, topics)))


def _fleet_logs(args: argparse.Namespace) -> dict[str, list[bytes]]:
    """Each log's records from the fleet store (in seq order, one per seq), in the range."""
    from vllm_audit_agent.fleet import read_back
    from vllm_audit_agent.fleet.store import FleetStore
    from vllm_audit_agent.records.export import parse_time

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    store = FleetStore.open(args.fleet_store, args.database)
    try:
        out: dict[str, list[bytes]] = {}
        for log_id in args.log_id or read_back.stored_log_ids(store):
            found = read_back.seq_range(store, log_id, since, until)
            if found is not None:
                out[log_id] = list(read_back.log_payloads(store, log_id, *found))
        return out
    finally:
        store.close()


def _verify_logs(args: argparse.Namespace, keys: list[Any], by_log: dict[str, list[bytes]],
                 ordered: bool = False) -> int:
    """Each log on its own (`ordered`: its records come in seq order, one per seq)."""
    from vllm_audit_agent.records.verify import Report, order_by_seq, verify_chain

    anchors = [a for k in keys for a in _anchors(args, k, [log for log in by_log if log],
                                                 quiet=len(keys) > 1)]
    reports: list[tuple[str, Report]] = []
    for log_id, records in by_log.items():
        key = _key_for(records, keys)
        pre = Report()
        in_order = records if ordered else order_by_seq(records, pre)
        report = verify_chain(in_order, key, args.allow_unsigned_tail,
                              _tree_check(args, key, anchors))
        report.duplicates_collapsed = pre.duplicates_collapsed
        if pre.broken is not None and (report.broken is None
                                       or pre.broken.seq <= report.broken.seq):
            report.broken = pre.broken
        report.log_id = report.log_id or log_id  # a break ends the report before it names it
        reports.append((log_id, report))
    missing = [a for a in anchors if a.origin.split("/", 1)[-1] not in by_log]
    out = {"intact": all(r.intact for _, r in reports) and not missing,
           "logs": [r.to_dict() for _, r in reports],
           "anchored_logs_missing": [a.origin for a in missing]}
    sys.stdout.write(dumps(out) + "\n")
    for log_id, report in reports:
        if report.broken is not None:
            _print_break(report, log_id or "(before identities)")
        else:
            print(f"{PROG} verify: log {log_id or '(before identities)'} intact: "
                  f"{report.records} records, seq {report.first_seq}..{report.last_seq}, "
                  f"tree size {report.tree_size}", file=sys.stderr)
    for anchor in missing:
        print(f"{PROG} verify: BROKEN: {anchor.source} holds a checkpoint of {anchor.origin}, "
              "which the topics do not have at all (truncated)", file=sys.stderr)
    return 0 if out["intact"] else 1


def run_prove(args: argparse.Namespace) -> int:
    from vllm_audit_agent.records import prove
    from vllm_audit_agent.records.chain import load_public_key, raw_public_key

    payloads = _payloads_of_path(args.path)
    key = _key_for(payloads, [load_public_key(path) for path in args.public_key])
    note_text = None
    if args.witness_url:
        anchors = _anchors(args, key, _log_ids(payloads))
        notes = [a.note.text() for a in anchors if a.note is not None]
        note_text = max(notes, key=lambda text: (int(text.split("\n")[1]), len(text)),
                        default=None)
    bundle = prove.build(payloads, seq=args.seq, trail_id=args.trail_id,
                         checkpoint_note=note_text, public_key_hex=raw_public_key(key).hex())
    text = dumps(bundle) + "\n"
    if args.output_file is None:
        sys.stdout.write(text)
    else:
        args.output_file.write_text(text)
    print(f"{PROG} prove: record at leaf {bundle['leaf_index']} of log {bundle['log_id']}, "
          f"tree size {bundle['tree_size']}, {len(bundle['inclusion_path'])} hashes "
          f"({len(text)} bytes)", file=sys.stderr)
    return 0
