"""`vllm-audit keygen`: the record log's signing key, made once, kept apart from the log.

    vllm-audit keygen --key FILE [--public-key FILE]

The agent signs its checkpoints with this key (--signing-key-file). Kept outside the data
directory (compose: a volume of its own mounted read-only; the chart: a Secret), a copy of the
directory is not enough to rewrite the log and re-sign it. An existing key is kept (an init
container may run this at every start); its public key is (re)written beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vllm_audit_agent.records.chain import key_id, load_private_key, public_pem, write_new_key


def add_keygen_parser(sub: Any) -> None:
    k = sub.add_parser(
        "keygen", help="make the record log's signing key (once), apart from the data dir",
        description="Make an Ed25519 signing key for the agent's --signing-key-file (PEM, "
                    "0600) and its public key (PEM) for `verify --public-key` and witnesses' "
                    "--log-public-key. A key that exists is kept and its public key rewritten.")
    k.add_argument("--key", type=Path, required=True, help="the private key file to make")
    k.add_argument("--public-key", type=Path, metavar="FILE",
                   help="where its public key goes (default: the key's path + .pub)")


def run_keygen(args: argparse.Namespace) -> int:
    public_path: Path = args.public_key or args.key.with_name(args.key.name + ".pub")
    if args.key.exists():
        key = load_private_key(args.key)
        public_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.write_bytes(public_pem(key.public_key()))
        made = "kept"
    else:
        key = write_new_key(args.key, public_path)
        made = "made"
    print(f"{made} the signing key {args.key} (key id {key_id(key.public_key())}); "
          f"public key {public_path}")
    return 0
