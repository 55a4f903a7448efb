"""Every shell command of the README runs here as written, on real parts (issue 24: the
README's `vllm serve` crashed, `replay` at `full` failed, and nothing noticed).

The commands run in the README's order through bash, from this checkout's .venv (`vllm-audit`,
`python`), with the placeholders and the paths of a production host substituted (SUBSTITUTED,
per command in `placeholders`): the agent's data directory and socket under a temporary
directory, `kafka:9092` a real Kafka-protocol broker (Tansu), MODEL a tiny generated model,
TRAIL_ID and ID the trails of requests sent to the vLLM the README starts. What the README
leaves to its defaults is set in the environment, never by editing a command: the agent's
ports (AGENT_ENV: the defaults may be taken on a shared machine) and the arguments the tiny
model needs on the CPU (VLLM_ARGS). A command that cannot run here is in
readme_commands.EXCUSED with its reason and its check; any other command the README gains
fails `test_every_readme_command_is_run_or_excused` until it is run here or excused.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import procs
from harness.kafka_broker import KafkaBroker
from harness.tiny_model import make_tiny_model
from tests.docs.readme_commands import EXCUSED, README, alternatives, commands

VENV_BIN = Path(procs.PYTHON).parent
#: Production paths and placeholders of the README -> what they are here (see `placeholders`).
SUBSTITUTED = ("/var/run/vllm-audit/ingest.sock", "/var/lib/vllm-audit", "kafka:9092",
               "localhost:9400", "MODEL_DIR", "MODEL", "TRAIL_ID", "ID")
#: Appended to the README's vLLM command: the port (8000 may be taken here), float32 and
#: eager mode for the tiny model on the CPU, a context and a memory share (on the CPU backend
#: the fraction of RAM reserved; 0.92 by default) that fit a shared test machine.
VLLM_ARGS = ("--host 127.0.0.1 --port {port} --dtype float32 --enforce-eager "
             "--max-model-len 2048 --gpu-memory-utilization 0.1")
#: Commands that follow a stream until stopped: run until their first line.
FOLLOWS = {"vllm-audit tail"}
#: Commands whose outcome waits on the agent's own schedule (a signed checkpoint every 10 s
#: while records arrive; the Kafka publisher): retried until they pass, within a bound.
SETTLES = {"vllm-audit verify", "vllm-audit replay TRAIL_ID --kafka-bootstrap"}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


#: A placeholder is a word in capitals (MODEL, TRAIL_ID); a variable assignment or use is not.
HTTP_METHODS = {"GET", "PUT", "POST", "DELETE"}  # curl -X: capitals, not placeholders
_PLACEHOLDER = re.compile(r"(?<![\w$])([A-Z][A-Z_]*[A-Z])(?![\w=])")


def test_every_readme_command_is_run_or_excused() -> None:
    """Every command the README gains is run by the test below (as written) unless it is
    excused, so each placeholder it uses must be one this test knows how to fill."""
    text = README.read_text()
    for command in commands(text):
        if command in EXCUSED:
            continue
        unknown = set(_PLACEHOLDER.findall(command.split("#")[0])) - set(SUBSTITUTED) \
            - HTTP_METHODS
        assert not unknown, f"README command {command!r}: no value for {sorted(unknown)} here"
    assert set(EXCUSED) <= set(commands(text)), "an excuse for a command the README lost"


@pytest.mark.parametrize("command", list(EXCUSED))
def test_an_excused_command_is_checked_otherwise(command: str) -> None:
    _, check = EXCUSED[command]
    check()


@dataclass
class Host:
    """The parts the README's commands act on, and what the commands found out."""
    tmp: Path
    kafka: str
    model: Path
    query_port: int = field(default_factory=procs.free_port)
    http_port: int = field(default_factory=procs.free_port)
    vllm_port: int = field(default_factory=procs.free_port)
    started: list[procs.Proc] = field(default_factory=list)
    trail_id: str = ""
    client_request_id: str = ""
    spare_trail_id: str = ""
    shell_vars: str = ""  # `X=$(...)` lines of the current block, carried into later lines

    @property
    def env(self) -> dict[str, str]:
        return procs.base_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")

    @property
    def agent_env(self) -> dict[str, str]:
        """What the README leaves to defaults, set for the agent and the CLI: the ports, the
        data directory the CLI finds the admin token in, and no NVML on this machine."""
        return {**self.env, "VLLM_AUDIT_QUERY_ADDRESS": f"127.0.0.1:{self.query_port}",
                "VLLM_AUDIT_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}",
                "VLLM_AUDIT_DATA_DIR": str(self.tmp / "data"), "VLLM_AUDIT_GPU": "none"}

    def placeholders(self, command: str) -> dict[str, str]:
        own_id = self.spare_trail_id if command.startswith("vllm-audit delete ID") else (
            self.client_request_id if "--client-request-id ID" in command else self.trail_id)
        return {"/var/run/vllm-audit/ingest.sock": str(self.tmp / "run" / "ingest.sock"),
                "/var/lib/vllm-audit": str(self.tmp / "data"), "kafka:9092": self.kafka,
                "localhost:9400": f"localhost:{self.http_port}", "MODEL_DIR": str(self.model),
                "MODEL": str(self.model), "TRAIL_ID": self.trail_id, "ID": own_id}

    def substitute(self, command: str) -> str:
        values = self.placeholders(command)
        assert set(values) == set(SUBSTITUTED)
        for name in SUBSTITUTED:  # longest first where one contains another (MODEL_DIR)
            command = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)" if name.isupper()
                             else re.escape(name), values[name].replace("\\", r"\\"), command)
        return command

    def run(self, command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["bash", "-c", self.shell_vars + self.substitute(command)],
                             env=self.agent_env, cwd=self.tmp, capture_output=True, text=True,
                             timeout=timeout, check=False)
        return out

    def ok(self, command: str, timeout: float = 180) -> str:
        out = self.run(command, timeout)
        assert out.returncode == 0, f"{command!r} exited {out.returncode}:\n{out.stderr[-3000:]}"
        return out.stdout

    def start(self, command: str, env: dict[str, str], ready: str, wait: float) -> None:
        proc = procs.Proc(["bash", "-c", self.substitute(command)], env,
                          self.tmp / f"proc-{len(self.started)}.log")
        self.started.append(proc)
        deadline = time.monotonic() + wait
        while not procs.http_ok(ready):
            if not proc.alive() or time.monotonic() > deadline:
                raise AssertionError(f"{command!r} did not come up:\n{proc.log_tail()}")
            time.sleep(0.5)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    model = make_tiny_model(tmp_path / "tiny-llama")
    with KafkaBroker() as kafka:
        h = Host(tmp_path, kafka.bootstrap, model)
        try:
            yield h
        finally:
            for proc in reversed(h.started):
                proc.stop()


# -- what each README command needs before and after it ------------------------------------------
def _agent(h: Host, command: str) -> None:
    h.start(command, h.agent_env, f"http://127.0.0.1:{h.http_port}/readyz", 60)


def _vllm(h: Host, command: str) -> None:
    h.start(f"{command} {VLLM_ARGS.format(port=h.vllm_port)}", h.env,
            f"http://127.0.0.1:{h.vllm_port}/health", 300)


def _set_levels(h: Host, command: str) -> None:
    for each in alternatives(command):
        assert json.loads(h.ok(each))["level"] == "AUDIT_LEVEL_" + each.split()[-1].upper() \
            .replace("-", "_")
    # The trail the next commands read is made at level full (issue 24: replay from a full
    # record without VLLM_AUDIT_INCLUDE_GRAMMAR); `full` is one of the alternatives above.
    h.ok("vllm-audit set-level full")
    _until(lambda: all(s["applied_level"] == "AUDIT_LEVEL_FULL" for s in
                       json.loads(h.ok("vllm-audit query stats"))["source_levels"]),
           "the hooks to apply level full")
    h.client_request_id = "readme-alice-1"
    h.trail_id = _request(h, "alice", h.client_request_id)


def _request(h: Host, user: str, client_request_id: str) -> str:
    """A JSON-schema chat completion to the README's vLLM; returns its trail id once final."""
    body = {"model": str(h.model), "messages": [{"role": "user", "content": "Describe a person"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "person", "schema": SCHEMA}},
            "max_tokens": 24, "temperature": 0, "user": user}
    request = urllib.request.Request(
        f"http://127.0.0.1:{h.vllm_port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": client_request_id})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
    found: list[str] = []

    def final() -> bool:
        trails = json.loads(h.ok(f"vllm-audit query list --client-request-id {client_request_id}"))
        found[:] = [t["request_id"] for t in trails["trails"]
                    if t["state"] == "TRAIL_STATE_FINISHED"]
        return bool(found)
    _until(final, f"the trail of {client_request_id}")
    return found[0]


def _until(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _settled(h: Host, command: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = h.run(command)
        if out.returncode == 0:
            return out.stdout
        assert time.monotonic() < deadline, f"{command!r} kept failing:\n{out.stderr[-3000:]}"
        time.sleep(2)


def _follow(h: Host, command: str) -> str:
    """Runs a following command until its first line (bounded), then stops it by its pid."""
    proc = procs.Proc(["bash", "-c", h.substitute(command)], h.agent_env, h.tmp / "follow.log")
    try:
        procs.wait_until(lambda: (h.tmp / "follow.log").read_text().strip(), 30, command)
    finally:
        proc.stop()
    return (h.tmp / "follow.log").read_text()


def _check(h: Host, command: str, stdout: str) -> None:
    """What the README says each command gives."""
    if command.startswith("vllm-audit query list --user alice -o table"):
        assert h.trail_id in stdout and stdout.splitlines()[0].split()[0] == "request_id"
    elif command.startswith("vllm-audit query get TRAIL_ID --events"):
        got = json.loads(stdout)
        assert got["summary"]["grammar_events"] and got["events"]
        # Replay works from the file the CLI writes (issue 24: it failed at step 1).
        trail_file = h.tmp / "trail.json"
        trail_file.write_text(stdout)
        proven = json.loads(h.ok(f"vllm-audit replay {trail_file} --model MODEL_DIR"))
        assert proven["proven"] and proven["steps_checked"] > 0, proven
    elif command.startswith("vllm-audit replay"):
        report = json.loads(stdout)
        assert report["proven"] and report["steps_checked"] > 0, report
    elif command.startswith("vllm-audit export"):
        assert (h.tmp / "out.jsonl").stat().st_size > 0
    elif command.startswith("vllm-audit tail"):
        assert json.loads(stdout.splitlines()[0])["request_id"]
    elif command.startswith("curl"):
        answer = json.loads(stdout)
        assert "error" not in answer, answer
        if "trails?user=alice" in command:
            assert [t["request_id"] for t in answer["trails"]] == [h.trail_id]


def _before_grpc_delete(h: Host, command: str) -> None:
    """The README's HTTP lines deleted the trail and cleared the store: one more request
    gives `vllm-audit delete ID` a trail to delete."""
    h.spare_trail_id = _request(h, "bob", "readme-bob-1")


#: Commands that start a part or prepare the next ones; every other command runs as written
#: and `_check` reads its output.
HANDLED = {
    "vllm-audit agent --ingest-socket /var/run/vllm-audit/ingest.sock --data-dir "
    "/var/lib/vllm-audit --kafka-bootstrap kafka:9092": _agent,
    "VLLM_AUDIT_ENABLED=true VLLM_AUDIT_AGENT_ADDRESS=/var/run/vllm-audit/ingest.sock python -m "
    "vllm.entrypoints.openai.api_server --model MODEL --middleware "
    "vllm_hooks.middleware.AuditMiddleware": _vllm,
    "vllm-audit set-level off|summary|key-events|full|full-with-allowed-sets": _set_levels,
}
BEFORE = {"vllm-audit delete ID; vllm-audit clear --confirm": _before_grpc_delete}


@pytest.mark.vllm
@pytest.mark.kafka
def test_the_readme_commands_work_as_written(host: Host) -> None:
    h = host
    for command in commands(README.read_text()):
        if command in EXCUSED:
            continue
        special = HANDLED.get(command)
        if special is not None:
            special(h, command)
            continue
        if command in BEFORE:
            BEFORE[command](h, command)
        if re.fullmatch(r"\w+=\$\(.*\)", command):  # a shell variable for the block's lines
            h.shell_vars += h.substitute(command) + "; "
            continue
        for each in alternatives(command) if "|" in command.split("#")[0] else [command]:
            if any(each.startswith(f) for f in FOLLOWS):
                stdout = _follow(h, each)
            elif any(each.startswith(s) for s in SETTLES):
                stdout = _settled(h, each)
            else:
                stdout = h.ok(each)
            _check(h, each, stdout)
