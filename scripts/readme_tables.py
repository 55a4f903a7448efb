"""The README's parts that are printed from the code, so they cannot drift from it:

    record-schema    the record's `schema` version (SCHEMA_VERSION, model/record.py)
    record-fields    every field of the request record and its type (records/schema.py)
    hook-variables   the hook's environment variables with their meaning (vllm_hooks/config/
                     env_vars.py: each ENV_* constant and the `#:` comment above it)
    metrics          every metric family a fresh agent exports, with its type and help (scraped
                     from a real agent's registry: fake GPU reader, so the DCGM-named families
                     are listed too)

Each sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in README.md. (The agent's
options table has its own generator, `python -m vllm_audit_agent.config`, and the tested
versions `scripts/lock.py`.)

    python scripts/readme_tables.py            rewrite them in README.md
    python scripts/readme_tables.py --check    exit 1 naming each part that differs
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for root in (REPO, REPO / "agent", REPO / "proto"):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

ENV_VARS = REPO / "vllm_hooks" / "config" / "env_vars.py"
_CONSTANT = re.compile(r'^(ENV_[A-Z0-9_]+) = "([A-Z0-9_]+)"')


def schema_version() -> str:
    from vllm_audit_agent.model.record import SCHEMA_VERSION

    return f"`schema: {SCHEMA_VERSION}`"


def hook_variables(source: Path = ENV_VARS) -> str:
    """One row per variable; consecutive constants under one `#:` comment share it."""
    rows = ["| variable | what it sets |", "|---|---|"]
    comment: list[str] = []
    shared = False  # the comment already belongs to the constant just above
    for line in source.read_text().splitlines():
        if line.startswith("#:"):
            if shared:
                comment, shared = [], False
            comment.append(line[2:].strip())
            continue
        found = _CONSTANT.match(line)
        if found:
            text = " ".join(comment).replace("|", "\\|") or "(see the variables above)"
            rows.append(f"| `{found.group(2)}` | {text} |")
            shared = True
            continue
        comment, shared = [], False
    return "\n".join(rows)


def record_fields() -> str:
    """One row per top-level field of the request record, from its JSON Schema (which the
    contract and the record log give: records/schema.py); nested messages name their fields."""
    from vllm_audit_agent.records.schema import trail_record_schema

    def kind(schema: dict[str, object]) -> str:
        if "const" in schema:
            return f"= {schema['const']}"
        if "enum" in schema:
            return "enum"
        if "oneOf" in schema:
            return " or ".join(kind(s) for s in schema["oneOf"])  # type: ignore[attr-defined]
        if schema.get("type") == "array":
            return f"array of {kind(schema['items'])}"  # type: ignore[arg-type]
        if schema.get("type") == "object" and "properties" in schema:
            names = ", ".join(schema["properties"])  # type: ignore[arg-type]
            return f"object ({names})"
        return str(schema.get("type", "any"))

    schema = trail_record_schema()
    rows = ["| field | type |", "|---|---|"]
    for name, field in schema["properties"].items():
        rows.append(f"| `{name}` | {kind(field)} |")
    return "\n".join(rows)


def metric_families() -> str:
    """`| family | type | help |` of every family a fresh agent's /metrics has."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from vllm_audit_agent.api.collectors import make_registry
    from vllm_audit_agent.config import AgentConfig
    from vllm_audit_agent.server import running_agent

    async def scrape(tmp: Path) -> str:
        config = AgentConfig(ingest_socket=tmp / "ingest.sock", query_address="127.0.0.1:0",
                             http_address="127.0.0.1:0", data_dir=tmp / "data", gpu="fake")
        async with running_agent(config) as handle:
            return generate_latest(make_registry(handle.state)).decode()

    with tempfile.TemporaryDirectory(prefix="readme-metrics-") as tmp:
        text = asyncio.run(scrape(Path(tmp)))
    rows = ["| family | type | what it counts |", "|---|---|---|"]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in sorted(families):
        family = families[name]
        shown = {"counter": f"{name}_total", "info": f"{name}_info"}.get(family.type, name)
        rows.append(f"| `{shown}` | {family.type} | {family.documentation.replace('|', '/')} |")
    return "\n".join(rows)


GENERATORS = {"record-schema": schema_version, "record-fields": record_fields,
              "hook-variables": hook_variables, "metrics": metric_families}


def region(name: str) -> re.Pattern[str]:
    return re.compile(f"(<!-- {name}:begin -->)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def rendered(name: str, body: str) -> str:
    """What goes between the markers: a table on lines of its own, a value inline."""
    return f"\n{body}\n" if "\n" in body else body


def update(text: str, parts: dict[str, str]) -> tuple[str, list[str]]:
    """(the text with every part rewritten, the names of the parts that differed)."""
    differ = []
    for name, body in parts.items():
        pattern = region(name)
        found = pattern.search(text)
        if found is None:
            raise SystemExit(f"README.md has no <!-- {name}:begin --> ... end marker")
        want = rendered(name, body)
        if found.group(2) != want:
            differ.append(name)
            text = text[:found.start(2)] + want + text[found.end(2):]
    return text, differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only say what differs (exit 1)")
    p.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new, differ = update(text, {name: make() for name, make in GENERATORS.items()})
    if args.check:
        for name in differ:
            print(f"{args.readme}: the {name} part differs from the code: run "
                  "python scripts/readme_tables.py", file=sys.stderr)
        return 1 if differ else 0
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: {', '.join(differ) or 'nothing'} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
