"""`vllm-audit`, the console script: parse the command line, run the command, and turn every
expected failure into one line on stderr and an exit code.

    parser.py            what the command line accepts (the agent's options from config.py)
    run_agent.py         `agent`
    run_witness.py       `witness` (its options too)
    run_fleet.py         `fleet` (options from FleetConfig)
    keygen.py            `keygen` (the record log's signing key, made once)
    query_commands.py    query, set-level, delete, clear, tail (ask the running agent)
    offline_commands.py  replay, export, stats export (read what the agent wrote)
    evidence_commands.py verify, prove (check the evidence, prove one record)
    output.py            JSON and table printing

Exit codes: 0 done, 1 the command failed (no agent, a broken chain, cannot start), 2 a usage
error, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from vllm_audit_agent.cli.evidence_commands import run_prove, run_verify
from vllm_audit_agent.cli.keygen import run_keygen
from vllm_audit_agent.cli.offline_commands import run_export, run_replay, run_stats_export
from vllm_audit_agent.cli.parser import PROG, build_parser, version
from vllm_audit_agent.cli.query_commands import rpc_error, run_client
from vllm_audit_agent.cli.run_agent import AgentStartError, run_agent
from vllm_audit_agent.cli.run_fleet import run_fleet
from vllm_audit_agent.cli.run_witness import run_witness

__all__ = ["main", "version"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "agent":
            if args.address or args.output or args.timeout is not None:
                raise ValueError("--address/--output/--timeout are client options; the agent "
                                 "listens on --query-address")
            return run_agent(args)
        if args.command == "witness":
            return run_witness(args)
        if args.command == "fleet":
            return run_fleet(args)
        if args.command == "keygen":
            return run_keygen(args)
        if args.command == "replay":
            return run_replay(args)
        if args.command == "verify":
            return run_verify(args)
        if args.command == "prove":
            return run_prove(args)
        if args.command == "export":
            return run_export(args)
        if args.command == "stats":
            return run_stats_export(args)
        return run_client(args)
    except (ValueError, AgentStartError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except grpc.RpcError as exc:
        print(f"{PROG}: {rpc_error(exc, args.resolved_address, getattr(args, 'credential', None))}",
              file=sys.stderr)
        return 1
    except OSError as exc:  # a missing or unreadable file: one line, not a traceback
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
