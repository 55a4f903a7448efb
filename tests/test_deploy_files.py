"""docker-compose.yml is for users (no Docker engine runs here): validate it by parsing."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_wires_agent_and_vllm_through_a_shared_socket() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "vllm-audit-agent", "vllm"} <= set(services)
    agent, vllm = services["vllm-audit-agent"], services["vllm"]
    socket_flag = next(a for a in agent["command"] if a.startswith("--ingest-socket="))
    socket_path = socket_flag.split("=", 1)[1]
    assert vllm["environment"]["VLLM_AUDIT_AGENT_ADDRESS"] == socket_path
    mount = str(Path(socket_path).parent)
    assert f"audit-socket:{mount}" in agent["volumes"] and f"audit-socket:{mount}" in vllm["volumes"]
    assert "--middleware=vllm_hooks.middleware.AuditMiddleware" in vllm["command"]
    assert vllm["environment"]["VLLM_AUDIT_ENABLED"] == "true"
    assert set(compose["volumes"]) >= {"audit-socket", "audit-wal"}
    # Every flag the compose file gives the agent is one the CLI accepts.
    from agent.cli import _parser

    _parser().parse_args([a for a in agent["command"][1:]])
