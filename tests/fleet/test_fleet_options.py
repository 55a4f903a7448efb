"""The fleet's options are declared once (config.py FleetConfig, api/fleet_config.py
FleetApiConfig): `vllm-audit fleet`'s flags and the README's two tables come from the
declarations, and agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_audit_agent.api.fleet_config import FLEET_API_OPTIONS
from vllm_audit_agent.cli.parser import build_parser
from vllm_audit_agent.cli.run_fleet import api_config
from vllm_audit_agent.config import FLEET_OPTIONS, FleetConfig
from vllm_audit_agent.options import Option, from_args, markdown_table

REPO = Path(__file__).resolve().parents[2]
TABLES = {"fleet-options": (FLEET_OPTIONS, ["vllm_audit_agent.config", "fleet"]),
          "fleet-api-options": (FLEET_API_OPTIONS, ["vllm_audit_agent.api.fleet_config"])}


def readme_table(marker: str) -> str:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    found = re.search(f"{re.escape(begin)}\n(.*?)\n{re.escape(end)}", (REPO / "README.md")
                      .read_text(), re.DOTALL)
    assert found, f"README.md has no table between {begin} and {end}"
    return found.group(1)


@pytest.mark.parametrize("marker", sorted(TABLES))
def test_each_readme_table_is_the_one_rendered_and_printed(marker: str) -> None:
    options, module = TABLES[marker]
    assert readme_table(marker) == markdown_table(options), (
        f"README.md's {marker} differ from their declarations: paste the output of "
        f"`python -m {' '.join(module)}` between the {marker} markers")
    out = subprocess.run([sys.executable, "-m", *module], capture_output=True, text=True,
                         timeout=60, check=True, cwd=REPO)
    assert out.stdout == markdown_table(options) + "\n"


def test_the_fleet_command_takes_every_flag_of_both() -> None:
    options: list[Option] = [*FLEET_OPTIONS, *FLEET_API_OPTIONS]
    flags = [o.flag for o in options]
    envs = [o.env for o in options]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    args = build_parser().parse_args(
        ["fleet", "--kafka-bootstrap", "k:9092", "--query-address", "127.0.0.1:7",
         "--query-rate-per-token", "3", "--api-data-dir", "/tmp/api"])
    config = FleetConfig.from_env({}, **from_args(FLEET_OPTIONS, args))
    api = api_config(args)
    assert (config.kafka_bootstrap, api.query_address, api.query_rate_per_token,
            str(api.api_data_dir)) == ("k:9092", "127.0.0.1:7", 3.0, "/tmp/api")
