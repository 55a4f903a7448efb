"""The agent's options are declared once (config.py, options.py): the flags, the environment
and the README's table all come from the declarations, and agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_audit_agent.cli.parser import build_parser
from vllm_audit_agent.config import OPTIONS, AgentConfig
from vllm_audit_agent.options import Option, from_args, markdown_table, read_env

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- agent-options:begin -->", "<!-- agent-options:end -->"


def readme_table() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(f"{re.escape(BEGIN)}\n(.*?)\n{re.escape(END)}", text, re.DOTALL)
    assert found, f"README.md has no table between {BEGIN} and {END}"
    return found.group(1)


def test_the_readme_table_is_the_one_rendered_from_the_declarations() -> None:
    assert readme_table() == markdown_table(OPTIONS), (
        "README.md's agent options differ from their declarations: paste the output of "
        "`python -m vllm_audit_agent.config` between the agent-options markers")


def test_the_table_is_printed_for_regeneration() -> None:
    out = subprocess.run([sys.executable, "-m", "vllm_audit_agent.config"], capture_output=True,
                         text=True, timeout=60, check=True, cwd=REPO)
    assert out.stdout == markdown_table(OPTIONS) + "\n"


def test_each_flag_and_variable_names_one_option() -> None:
    flags = [o.flag for o in OPTIONS]
    envs = [o.env for o in OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert all(f.startswith("--") for f in flags)
    assert all(e.startswith("VLLM_AUDIT_") for e in envs)
    assert all(o.help and o.default == getattr(AgentConfig(), o.field) for o in OPTIONS)


def sample(option: Option) -> str:
    """A value other than the default, as text."""
    if option.choices:
        return next(c for c in option.choices if c != option.default_text)
    if option.field == "ready_requires":
        return "kafka_connected"
    if option.field in ("witnesses", "otlp_endpoint"):
        return "http://10.0.0.1:1"
    if option.field == "kafka_formats":
        return "requests=ocsf"
    if option.kind is int:
        return "7"
    if option.kind is float:
        return "7.5"
    if option.kind is Path:
        return "/elsewhere/file"
    return "10.0.0.1:1"  # an address fits every string option


def test_a_repeatable_flag_adds_to_its_comma_separated_list() -> None:
    args = build_parser().parse_args(["agent", "--witness", "http://a:1",
                                      "--witness", "http://b:2/w/,https://c"])
    from_flag = from_args(OPTIONS, args)
    assert from_flag == read_env(OPTIONS, {"VLLM_AUDIT_WITNESSES": "http://a:1,http://b:2/w,https://c"})
    assert from_flag["witnesses"] == ("http://a:1", "http://b:2/w", "https://c")
    with pytest.raises(ValueError, match="ftp://x"):
        from_args(OPTIONS, build_parser().parse_args(["agent", "--witness", "ftp://x"]))


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_the_flag_and_the_variable_set_the_same_value(option: Option) -> None:
    if option.is_switch:
        flag_args, env_text = [option.flag], "true"
    else:
        flag_args, env_text = [option.flag, sample(option)], sample(option)
    from_flag = from_args(OPTIONS, build_parser().parse_args(["agent", *flag_args]))
    from_env = read_env(OPTIONS, {option.env: env_text})
    assert from_flag == from_env
    assert from_env[option.field] != option.default


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.kind in (int, float) and not o.parse],
                         ids=lambda o: o.env)
def test_a_bad_number_names_its_variable(option: Option) -> None:
    with pytest.raises(ValueError, match=f"{option.env}='many' is not a {option.kind.__name__}"):
        AgentConfig.from_env({option.env: "many"})
