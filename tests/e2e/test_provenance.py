"""Which model answered, with which settings, and who changed it — through a real `vllm serve`
(CPU) with LoRA enabled at runtime, the hook and a real agent.

- a served request's record names the weights' SHA-256 (the same the test computes from the
  model's files), the tokenizer's, dtype, vLLM and hook versions, and the sampling parameters
  the client sent (stop strings under the prompt's capture policy);
- loading a LoRA adapter over /v1/load_lora_adapter is an admin record (who, what, the
  arguments, the result) in the record log, and the next request that names the adapter has
  a record naming it with its digest and a provenance generation one higher;
- an admin call's secret-looking arguments are redacted in its record, and a refused call
  is on record with vLLM's answer.
(The digest cache across restarts: tests/hooks/test_digests.py.)
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from harness import procs
from tests.e2e.conftest import Agent, agent_process
from tests.e2e.helpers import FINAL_STATES, trail_ids_for_client_id
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.model.record import message_to_dict
from vllm_audit_agent.records.read_only import read_records
from vllm_hooks.events.digests import digest_files, weight_files

pytestmark = pytest.mark.vllm

RANK = 8


def make_lora_adapter(out: Path, seed: int = 3) -> Path:
    """A rank-8 LoRA adapter for the tiny Llama (q_proj and v_proj of both layers), written as
    PEFT writes one: adapter_config.json and adapter_model.safetensors."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for module, out_features in (("q_proj", 128), ("v_proj", 64)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, 128, generator=gen) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, RANK, generator=gen)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 16,
        "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False,
        "use_dora": False, "base_model_name_or_path": "tiny"}))
    return out


@pytest.fixture(scope="module")
def prov_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "provenance-agent", None)


@pytest.fixture(scope="module")
def lora_server(tiny_model: Path, e2e_tmp: Path, prov_agent: Agent) -> Iterator[str]:
    proc, base = procs.start_vllm_server(
        tiny_model, e2e_tmp, prov_agent.socket, None,
        extra_args=("--enable-lora", "--max-lora-rank", str(RANK), "--max-loras", "1"),
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="true",
        VLLM_AUDIT_DIGEST_CACHE=str(e2e_tmp / "digest-cache.json"))
    try:
        yield base
    finally:
        proc.stop()


def _complete(base: str, model: str, **params: Any) -> str:
    client_id = uuid.uuid4().hex
    r = httpx.post(base + "/v1/completions", timeout=120, headers={"X-Request-Id": client_id},
                   json={"model": model, "prompt": "audit the model", **params})
    assert r.status_code == 200, r.text
    return client_id


def _record_of(agent: Agent, client_id: str, timeout: float = 60) -> dict[str, Any]:
    """The trail's fields as its record holds them, once final with both halves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trail_id in trail_ids_for_client_id(agent.query, client_id):
            t = agent.query.GetTrail(query_pb2.GetTrailRequest(request_id=trail_id))
            if t.summary.state in FINAL_STATES and t.summary.engine_request_ids \
                    and t.summary.status_code:
                return message_to_dict(t.summary)
        time.sleep(0.3)
    raise AssertionError(f"no final trail for {client_id}")


def _log_records(agent: Agent) -> list[dict[str, Any]]:
    return [orjson.loads(p) for p in read_records(agent.socket.parent / "agent-data" / "records")]


def _admin_records(agent: Agent, action: str, min_status: int = 0, timeout: float = 30
                   ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in _log_records(agent) if r.get("type") == "admin"
                 and r.get("action") == action and r.get("status_code", 0) >= min_status]
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no admin record of {action}")


def test_a_served_record_names_the_weights_and_the_sampling(
        lora_server: str, prov_agent: Agent, tiny_model: Path) -> None:
    client_id = _complete(lora_server, "tiny", max_tokens=5, temperature=0.7, top_p=0.9,
                          top_k=20, seed=1234, stop=["zebra"], presence_penalty=0.5,
                          logit_bias={"5": 1.0})
    deadline = time.monotonic() + 60
    record = _record_of(prov_agent, client_id)
    while record["model_provenance"]["weights_digest_status"] == "pending":
        assert time.monotonic() < deadline, "the weights' digest never arrived"
        client_id = _complete(lora_server, "tiny", max_tokens=5, temperature=0.7, top_p=0.9,
                              top_k=20, seed=1234, stop=["zebra"], presence_penalty=0.5,
                              logit_bias={"5": 1.0})
        record = _record_of(prov_agent, client_id)
    prov = record["model_provenance"]
    want = digest_files(weight_files(tiny_model))
    assert prov["weights_sha256"] == want.sha256 and len(want.sha256) == 64
    assert prov["weights_files"] == 1 and prov["weights_bytes"] == want.size
    assert prov["weights_digest_status"] in ("done", "cached")
    assert len(prov["tokenizer_sha256"]) == 64
    assert prov["dtype"] == "torch.float32" and prov["quantization"] == ""
    assert prov["vllm_version"].startswith("0.") and prov["hook_version"]
    assert prov["model_path"] == str(tiny_model.resolve())
    s = record["sampling"]
    assert s["temperature"] == pytest.approx(0.7) and s["top_p"] == pytest.approx(0.9)
    assert s["top_k"] == 20 and s["seeded"] and s["seed"] == 1234 and s["max_tokens"] == 5
    assert s["presence_penalty"] == pytest.approx(0.5) and s["logit_bias"] is True
    assert s["n"] == 1 and s["repetition_penalty"] == pytest.approx(1.0)
    # The test server captures prompts in full: the stop string is kept as sent.
    assert s["stop"] == ["zebra"]
    assert record["lora_adapter"]["name"] == ""


def test_loading_an_adapter_is_an_admin_record_and_the_next_request_names_it(
        lora_server: str, prov_agent: Agent, e2e_tmp: Path) -> None:
    before = _record_of(prov_agent, _complete(lora_server, "tiny", max_tokens=2))
    adapter = make_lora_adapter(e2e_tmp / "lora-sql")
    r = httpx.post(lora_server + "/v1/load_lora_adapter", timeout=120,
                   headers={"X-Forwarded-User": "ops"},
                   json={"lora_name": "sql", "lora_path": str(adapter)})
    assert r.status_code == 200, r.text
    (admin,) = _admin_records(prov_agent, "load_lora_adapter")
    assert admin["path"] == "/v1/load_lora_adapter" and admin["status_code"] == 200
    assert json.loads(admin["arguments"]) == {"lora_name": "sql", "lora_path": str(adapter)}
    assert admin["client_ip"] == "127.0.0.1" and admin["auth_decision"] == "AUTH_STATUS_NONE"
    assert admin["event_id"].startswith("admin/") and admin["hash"]
    record = _record_of(prov_agent, _complete(lora_server, "sql", max_tokens=3))
    lora = record["lora_adapter"]
    assert lora["name"] == "sql" and lora["path"] == str(adapter)
    assert lora["sha256"] == digest_files([adapter / "adapter_model.safetensors",
                                           adapter / "adapter_config.json"]).sha256
    assert record["model_provenance"]["generation"] > before["model_provenance"]["generation"]
    assert record["model_provenance"]["weights_sha256"] == \
        before["model_provenance"]["weights_sha256"]


def test_an_admin_call_s_secrets_are_not_recorded(lora_server: str, prov_agent: Agent) -> None:
    body = {"lora_name": "nope", "lora_path": "/nonexistent/adapter", "api_key": "sk-SECRET"}
    r = httpx.post(lora_server + "/v1/load_lora_adapter?token=t0ps3cret", json=body, timeout=60)
    assert r.status_code >= 400
    # The refused load is on record too.
    admin = _admin_records(prov_agent, "load_lora_adapter", min_status=400)[-1]
    assert "sk-SECRET" not in json.dumps(admin) and "t0ps3cret" not in json.dumps(admin)
    assert json.loads(admin["arguments"])["api_key"] == "<redacted>"
    assert admin["arguments_sha256"] == hashlib.sha256(r.request.content).hexdigest()
    assert admin["result"]  # vLLM's error message
