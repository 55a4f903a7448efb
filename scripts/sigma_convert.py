"""Converts the Sigma rules of detections/sigma/ with pySigma's backends, as JSON on stdout:
{rule name: {backend: [query, ...] or {"unsupported": why}}}.

Runs in the tools environment (`make tools` makes .cache/sigma-venv: pySigma and its
ClickHouse, Elasticsearch and Splunk backends, which declare Python >= 3.13 and install only
beside the product, never into it):

    .cache/sigma-venv/bin/python scripts/sigma_convert.py [--table vllm_audit.events] [DIR]

ClickHouse queries read the fleet store's `events` view (fleet/sigma_view.py); Elasticsearch
gets Lucene (no correlations in that language) and ES|QL (every rule); Splunk gets SPL.
A correlation rule is converted with the base rules it names; each base rule is converted on
its own too (it is a search in its own right).

ClickHouse's correlation queries count over the table they are given, whatever the rule's
timespan (the backend has no time bucketing): schedule them over the window, with `--table`
a subquery of the view, e.g.
`--table "(SELECT * FROM vllm_audit.events WHERE timestamp > now() - INTERVAL 10 SECOND)"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sigma.backends.clickhouse import ClickhouseBackend
from sigma.backends.elasticsearch import ESQLBackend, LuceneBackend
from sigma.backends.splunk import SplunkBackend
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule

RULES = Path(__file__).resolve().parents[1] / "detections" / "sigma"


def backends(table: str) -> dict[str, Any]:
    return {"clickhouse": ClickhouseBackend(table_name=table), "lucene": LuceneBackend(),
            "esql": ESQLBackend(), "splunk": SplunkBackend()}


def convert(directory: Path, table: str) -> dict[str, dict[str, Any]]:
    collection = SigmaCollection.load_ruleset([str(p) for p in sorted(directory.glob("*.yml"))])
    out: dict[str, dict[str, Any]] = {}
    for rule in collection.rules:
        converted: dict[str, Any] = {}
        for name, backend in backends(table).items():
            try:
                if isinstance(rule, SigmaCorrelationRule):
                    bases = [collection[ref.reference] for ref in rule.rules]
                    converted[name] = backend.convert(SigmaCollection([*bases, rule]))
                else:  # alone: in the whole collection a correlation's base gives nothing
                    converted[name] = backend.convert(SigmaCollection.from_yaml(
                        Path(str(rule.source.path)).read_text()) if rule.source else
                        SigmaCollection([rule]))
            except NotImplementedError as exc:
                converted[name] = {"unsupported": str(exc)}
        out[str(rule.name or rule.id)] = {
            "file": Path(str(rule.source.path)).name if rule.source else "",
            "title": rule.title, "level": str(rule.level.name.lower()) if rule.level else "",
            "correlation": isinstance(rule, SigmaCorrelationRule), **converted}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=RULES)
    parser.add_argument("--table", default="vllm_audit.events",
                        help="the ClickHouse table or view the queries read")
    args = parser.parse_args()
    json.dump(convert(args.directory, args.table), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
