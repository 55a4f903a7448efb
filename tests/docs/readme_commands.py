"""The README's shell command blocks, read as a user reads them, and the explicit list of
those that cannot run here (each with its reason and what checks it instead).

A block (```sh) is split into commands: backslash continuations joined, comment lines left
out. A word `a|b|c` of a command is the README's "one of": the command runs once per
alternative (`alternatives`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
_FENCE = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ONE_OF = re.compile(r"^[\w.-]+(?:\|[\w.-]+)+$")


def commands(text: str) -> list[str]:
    """Every command of every ```sh block, in the README's order."""
    out: list[str] = []
    for block in _FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", "", block)
        out += [line.strip() for line in joined.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return out


def alternatives(command: str) -> list[str]:
    """The command once per alternative of its `a|b|c` word(s) (the same position in each)."""
    words = command.split("#", 1)[0].split()
    choices = [w.split("|") if _ONE_OF.match(w) else [w] for w in words]
    n = max(len(c) for c in choices)
    return [" ".join(c[min(i, len(c) - 1)] for c in choices) for i in range(n)]


# -- what cannot run here, and what checks it instead ----------------------------------------------
def _make_targets(*targets: str) -> None:
    """`make -n`: the targets exist and say what they run (nothing is run)."""
    out = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "scripts/demo.py" in out.stdout if "demo" in targets else "pytest" in out.stdout


def _extra(name: str) -> Callable[[], None]:
    def check() -> None:
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]
        assert extras.get(name), f"pyproject.toml has no [{name}] extra"
    return check


def _chart_values(*keys: str) -> Callable[[], None]:
    """The `--set` keys exist in the chart's values (tests/test_helm_chart.py renders and
    lints the chart itself)."""
    def check() -> None:
        values = yaml.safe_load((REPO / "helm" / "vllm-audit" / "values.yaml").read_text())
        for key in keys:
            node = values
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"values.yaml has no {key}"
                node = node[part]
    return check


#: README command -> (why it is not run here, what checks it instead).
def _from_the_repository(command: str) -> Callable[[], None]:
    """Runs `command` in the repository's root, as the README's reader does, and checks it
    prints one JSON document (its `>` redirection dropped: nothing is written in the checkout)."""
    def check() -> None:
        out = subprocess.run(["bash", "-c", command.split(">")[0]], cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, f"{command!r} exited {out.returncode}:\n{out.stderr[-3000:]}"
        assert json.loads(out.stdout), f"{command!r} printed no queries"
    return check


def _parses(*argv: str) -> Callable[[], None]:
    """The CLI accepts the command's arguments as written (tests/agent/test_archive.py runs
    them against a real S3 server)."""
    def check() -> None:
        from vllm_audit_agent.cli.parser import build_parser
        args = build_parser().parse_args(list(argv))
        assert args.command in ("verify", "export"), args
    return check


EXCUSED: dict[str, tuple[str, Callable[[], None]]] = {
    "AWS_ENDPOINT_URL=http://s3:8333 vllm-audit verify s3://audit/pod-0 --public-key log.pub":
        ("needs an S3 server holding an archive; tests/agent/test_archive.py verifies one on "
         "SeaweedFS", _parses("verify", "s3://audit/pod-0", "--public-key", "log.pub")),
    "vllm-audit export --archive s3://audit/pod-0 --archive-endpoint http://s3:8333 "
    "--since 2026-11-01":
        ("needs an S3 server holding an archive; tests/agent/test_archive.py exports one from "
         "SeaweedFS", _parses("export", "--archive", "s3://audit/pod-0", "--archive-endpoint",
                              "http://s3:8333", "--since", "2026-11-01")),
    ".cache/sigma-venv/bin/python scripts/sigma_convert.py > sigma-queries.json":
        ("names paths in the repository (the tools venv `make tools` makes, the script): run "
         "there, not in the scratch directory the other commands run in; "
         "tests/siem/test_sigma_rules.py runs every query it prints",
         _from_the_repository(".cache/sigma-venv/bin/python scripts/sigma_convert.py "
                              "> sigma-queries.json")),
    "make demo": ("runs scripts/install.sh, which re-syncs the shared .venv under the other "
                  "tests; the demo's parts (agent, broker, vLLM with the hook, the CLI) are "
                  "what the vllm test below runs", lambda: _make_targets("demo")),
    "make test": ("runs this suite (it would run itself) for ~10 min",
                  lambda: _make_targets("test")),
    'pip install "vllm-audit[hooks]"          # into vLLM\'s image':
        ("installs into an image; this checkout is installed already", _extra("hooks")),
    'pip install "vllm-audit[agent]"          # into the sidecar\'s image':
        ("installs into an image; this checkout is installed already", _extra("agent")),
    'kubectl create secret generic audit-hmac --from-literal=hmac-key="$(openssl rand -hex 32)"':
        ("needs a Kubernetes cluster", _chart_values("audit.hmacKeySecret.name")),
    "helm install llm helm/vllm-audit --set audit.hmacKeySecret.name=audit-hmac "
    "--set agent.kafka.bootstrap=kafka:9092":
        ("needs a Kubernetes cluster; tests/test_helm_chart.py renders, lints and validates "
         "the chart", _chart_values("audit.hmacKeySecret.name", "agent.kafka.bootstrap")),
}
