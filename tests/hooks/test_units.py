"""Hook parts that need no vLLM: buffer, capture policy, settings, popcount."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events.capture import CapturePolicy, luhn_valid, redact
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.vllm.grammar_tap import allowed_counts


def test_buffer_drops_newest_and_counts_by_reason() -> None:
    buf = EventBuffer(capacity=3)
    for i in range(5):
        buf.offer((i,))
    assert buf.drain(10) == [(0,), (1,), (2,)]
    assert buf.take_drops() == {"buffer_full": 2}
    assert buf.take_drops() == {}  # taken once, into one gap marker
    assert buf.dropped_total() == {"buffer_full": 2}


def test_buffer_counts_are_exact_under_concurrent_offers() -> None:
    buf = EventBuffer(capacity=1000)

    def offer_many() -> None:
        for i in range(5000):
            buf.offer((i,))

    threads = [threading.Thread(target=offer_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(buf) + buf.dropped_total()["buffer_full"] == 20000
    assert len(buf) == 1000


def test_buffer_rejects_nonpositive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity must be > 0"):
        EventBuffer(0)


def test_capture_policies() -> None:
    policy = CapturePolicy(b"k" * 32)
    assert policy.apply("full", "secret") == "secret"
    assert policy.apply("none", "secret") == ""
    digest = policy.apply("hmac", "secret")
    assert digest.startswith("hmac-sha256:") and "secret" not in digest
    assert digest == CapturePolicy(b"k" * 32).apply("hmac", "secret")  # joinable with the key
    assert digest != CapturePolicy(b"x" * 32).apply("hmac", "secret")


def test_redaction_placeholders() -> None:
    text = (
        "mail bob@example.com card 4111 1111 1111 1111 not-card 1234 5678 9012 3456 "
        "ip 10.1.2.3 iban DE89 3704 0044 0532 0130 00 phone +44 20 7946 0958"
    )
    out = redact(text)
    assert "bob@example.com" not in out and "<EMAIL>" in out
    assert "<CARD>" in out and "4111" not in out
    assert "<IP>" in out and "10.1.2.3" not in out
    assert "<IBAN>" in out and "DE89" not in out
    assert "<PHONE>" in out
    assert luhn_valid("4111111111111111") and not luhn_valid("1234567890123456")


def test_settings_from_env_and_clear_errors() -> None:
    s = HookSettings.from_env({"VLLM_STRUCTURED_OUTPUT_AUDIT": "true", "VLLM_AUDIT_LEVEL": "full"})
    assert s.enabled and s.level == Level.FULL
    assert s.grpc_target() == "unix:/var/run/vllm-audit/ingest.sock"
    assert not HookSettings.from_env({}).enabled
    with pytest.raises(ValueError, match="VLLM_AUDIT_BUFFER_EVENTS='-1' must be > 0"):
        HookSettings.from_env({"VLLM_AUDIT_BUFFER_EVENTS": "-1"})
    with pytest.raises(ValueError, match="unknown audit level 'loud'"):
        HookSettings.from_env({"VLLM_AUDIT_LEVEL": "loud"})
    with pytest.raises(ValueError, match="VLLM_AUDIT_CAPTURE_PROMPT='raw'"):
        HookSettings.from_env({"VLLM_AUDIT_CAPTURE_PROMPT": "raw"})


def test_allowed_counts_mask_padding_bits() -> None:
    vocab = 70  # 3 words: the last has 6 real bits and 26 padding bits
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(5, 96), dtype=np.uint8)
    bits[0, :] = 1  # an "allow all" row, padding bits set like vLLM's -1 fill
    packed = np.packbits(bits, axis=1, bitorder="little").view(np.int32)
    expected = bits[:, :vocab].sum(axis=1)
    assert allowed_counts(packed, vocab).tolist() == expected.tolist()
    assert allowed_counts(np.full((1, 3), -1, dtype=np.int32), vocab).tolist() == [vocab]


@pytest.mark.parametrize("vocab", [32, 64, 95, 96, 100, 128, 150])
def test_allowed_counts_odd_and_even_word_counts(vocab: int) -> None:
    # Word pairs go through a uint64 view; an odd last full word and the tail do not.
    rng = np.random.default_rng(vocab)
    words = (vocab + 31) // 32
    bits = rng.integers(0, 2, size=(7, words * 32), dtype=np.uint8)
    packed = np.packbits(bits, axis=1, bitorder="little").view(np.int32)
    assert allowed_counts(packed, vocab).tolist() == bits[:, :vocab].sum(axis=1).tolist()
    # A row slice of a larger array (vLLM hands over a view of its preallocated bitmask).
    big = np.concatenate([packed, packed], axis=0)[3:10]
    assert allowed_counts(big, vocab).tolist() == np.concatenate(
        [bits, bits])[3:10, :vocab].sum(axis=1).tolist()


def test_levels_are_the_proto_enum_ranked_by_capture() -> None:
    from vllm_audit.v1 import events_pb2 as pb

    wire = {n.removeprefix("AUDIT_LEVEL_") for n in pb.AuditLevel.DESCRIPTOR.values_by_name} - {"UNSPECIFIED"}
    assert {level.name for level in Level} == wire
    for level in Level:
        assert Level.from_wire(level.wire) is level
    # KEY_EVENTS is wire number 5 but captures less than FULL: ranks, not numbers, compare.
    assert Level.KEY_EVENTS.wire == 5 > Level.FULL.wire
    assert Level.SUMMARY < Level.KEY_EVENTS < Level.FULL < Level.FULL_WITH_ALLOWED_SETS
    assert Level.parse("key-events") is Level.KEY_EVENTS
    with pytest.raises(ValueError, match="no audit level for wire value 0"):
        Level.from_wire(0)


def test_runtime_takes_pushed_wire_levels_as_ranks() -> None:
    from vllm_hooks.runtime import HookRuntime

    rt = HookRuntime(HookSettings(enabled=True, hmac_key=b"k"), "test")
    rt.apply_config(Level.KEY_EVENTS.wire, 1)
    assert rt.level == Level.KEY_EVENTS and rt.level < Level.FULL
    rt.apply_config(0, 2)  # unspecified: ignored
    assert rt.level == Level.KEY_EVENTS


def test_seed_variables_map_onto_settings() -> None:
    s = HookSettings.from_env({"VLLM_AUDIT_RECORD_ALLOWED_TOKENS": "true"})
    assert s.level is Level.FULL_WITH_ALLOWED_SETS
    assert HookSettings.from_env({"VLLM_AUDIT_RECORD_FULL_EVENTS": "1"}).level is Level.FULL
    assert HookSettings.from_env({"VLLM_AUDIT_RECORD_FULL_EVENTS": "false"}).level is Level.SUMMARY
    s = HookSettings.from_env({
        "VLLM_AUDIT_INCLUDE_GRAMMAR": "yes", "VLLM_AUDIT_GRAMMAR_MAX_BYTES": "100",
        "VLLM_AUDIT_IN_RESPONSE": "true", "VLLM_AUDIT_RESPONSE_LEVEL": "full",
        "VLLM_AUDIT_ASYNC": "false", "VLLM_AUDIT_PERSIST": "true",
        "VLLM_AUDIT_LOG_DIR": "/data/audit", "VLLM_AUDIT_MAX_TRAILS": "500",
    })
    assert (s.include_grammar, s.grammar_max_bytes, s.in_response, s.response_level) == (
        True, 100, True, "full")
    assert (s.async_requested, s.persist, s.log_dir, s.max_trails) == (
        False, True, "/data/audit", 500)
    notes = "\n".join(s.startup_notes())
    assert "VLLM_AUDIT_ASYNC=false is not offered" in notes
    assert "--data-dir /data/audit" in notes and "VLLM_AUDIT_MAX_TRAILS=500" in notes
    assert HookSettings.from_env({}).startup_notes() == []


@pytest.mark.parametrize(("env", "message"), [
    ({"VLLM_AUDIT_RECORD_ALLOWED_TOKENS": "maybe"}, "VLLM_AUDIT_RECORD_ALLOWED_TOKENS='maybe'"),
    ({"VLLM_AUDIT_RECORD_FULL_EVENTS": "2"}, "VLLM_AUDIT_RECORD_FULL_EVENTS='2' is not a boolean"),
    ({"VLLM_AUDIT_INCLUDE_GRAMMAR": "si"}, "VLLM_AUDIT_INCLUDE_GRAMMAR='si'"),
    ({"VLLM_AUDIT_ASYNC": "sync"}, "VLLM_AUDIT_ASYNC='sync'"),
    ({"VLLM_AUDIT_PERSIST": "disk"}, "VLLM_AUDIT_PERSIST='disk'"),
    ({"VLLM_AUDIT_IN_RESPONSE": "y e s"}, "VLLM_AUDIT_IN_RESPONSE="),
    ({"VLLM_AUDIT_RESPONSE_LEVEL": "verbose"}, "VLLM_AUDIT_RESPONSE_LEVEL='verbose'"),
    ({"VLLM_AUDIT_MAX_TRAILS": "0"}, "VLLM_AUDIT_MAX_TRAILS='0' must be > 0"),
    ({"VLLM_AUDIT_GRAMMAR_MAX_BYTES": "big"}, "VLLM_AUDIT_GRAMMAR_MAX_BYTES='big'"),
    ({"VLLM_AUDIT_RECORD_ALLOWED_TOKENS": "true", "VLLM_AUDIT_LEVEL": "full"},
     "VLLM_AUDIT_RECORD_ALLOWED_TOKENS=true needs level full-with-allowed-sets but "
     "VLLM_AUDIT_LEVEL='full'"),
])
def test_seed_variables_reject_bad_values_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HookSettings.from_env(env)


def test_record_custom_event_validates_and_needs_a_runtime() -> None:
    from vllm_hooks.api import record_custom_event

    with pytest.raises(ValueError, match="name must be a non-empty string"):
        record_custom_event(" ")
    with pytest.raises(TypeError, match="attributes must map str to str"):
        record_custom_event("x", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="over 16384"):
        record_custom_event("x", {"k": "v" * 20000})


class _Auditor:
    """Stands in for the agent query (the e2e test drives the real one through vllm serve)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[tuple[str, ...]] = []

    async def audit(self, trail_ids: tuple[str, ...]) -> dict[str, object]:
        self.asked.append(trail_ids)
        if self.fail:
            raise RuntimeError("agent unreachable")
        return {"request_id": trail_ids[0]}


def _run_injector(auditor: _Auditor, messages: list[dict[str, object]],
                  path: str = "/v1/chat/completions") -> tuple[list[dict[str, object]], object]:
    import asyncio

    from vllm_hooks.errors import InternalErrors
    from vllm_hooks.http.response_audit import ResponseInjector

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    errors = InternalErrors()
    injector = ResponseInjector(auditor, "rid", path, send, errors)  # type: ignore[arg-type]

    async def main() -> None:
        for m in messages:
            await injector.send(m)

    asyncio.run(main())
    return sent, errors


def _start(status: int, content_type: bytes, length: int) -> dict[str, object]:
    return {"type": "http.response.start", "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(length).encode())]}


def test_response_injector_adds_the_audit_and_fixes_the_length() -> None:
    import orjson

    body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1}}'
    auditor = _Auditor()
    sent, _ = _run_injector(auditor, [
        _start(200, b"application/json", len(body)),
        {"type": "http.response.body", "body": body[:10], "more_body": True},
        {"type": "http.response.body", "body": body[10:], "more_body": False},
    ], path="/v1/completions")
    start, out = sent
    new_body = out["body"]
    assert isinstance(new_body, bytes)
    assert orjson.loads(new_body)["usage"]["structured_output_audit"] == {"request_id": "rid"}
    assert (b"content-length", str(len(new_body)).encode()) in start["headers"]  # type: ignore[operator]
    assert auditor.asked == [("rid", "rid-0")]


def test_response_injector_passes_errors_and_failures_through_unchanged() -> None:
    body = b'{"error":{"message":"bad"}}'
    messages: list[dict[str, object]] = [
        _start(400, b"application/json", len(body)),
        {"type": "http.response.body", "body": body, "more_body": False},
    ]
    auditor = _Auditor()
    sent, _ = _run_injector(auditor, messages)
    assert sent == messages and auditor.asked == []
    # The agent fails: the client still gets vLLM's bytes, and the failure is counted.
    body = b'{"choices":[],"usage":{"prompt_tokens":1}}'
    messages = [_start(200, b"application/json", len(body)),
                {"type": "http.response.body", "body": body, "more_body": False}]
    sent, errors = _run_injector(_Auditor(fail=True), messages)
    assert sent == messages
    assert errors.snapshot() == {"response_audit.patch": 1}  # type: ignore[attr-defined]


def test_response_injector_touches_only_the_final_usage_chunk() -> None:
    import orjson

    token = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1}}\n\n'
    final = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n'
    sent, _ = _run_injector(_Auditor(), [
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/event-stream")]},
        {"type": "http.response.body", "body": token, "more_body": True},
        {"type": "http.response.body", "body": final, "more_body": False},
    ])
    assert sent[1]["body"] == token
    last = sent[2]["body"]
    assert isinstance(last, bytes) and last.endswith(b"data: [DONE]\n\n")
    first_event = last.split(b"\n\n")[0]
    assert orjson.loads(first_event[6:])["usage"]["structured_output_audit"] == {
        "request_id": "rid"}


def test_presets_are_defaults_that_explicit_variables_override() -> None:
    s = HookSettings.from_env({"VLLM_AUDIT_PRESET": "forensic"})
    assert (s.level, s.include_grammar, s.in_response) == (Level.FULL, True, False)
    s = HookSettings.from_env({"VLLM_AUDIT_PRESET": "standard"})
    assert (s.level, s.include_grammar) == (Level.KEY_EVENTS, True)
    s = HookSettings.from_env({"VLLM_AUDIT_PRESET": "debug", "VLLM_AUDIT_IN_RESPONSE": "false",
                               "VLLM_AUDIT_LEVEL": "full"})
    assert (s.level, s.in_response, s.response_level) == (Level.FULL, False, "full")
    s = HookSettings.from_env({"VLLM_AUDIT_PRESET": "debug",
                               "VLLM_AUDIT_RECORD_FULL_EVENTS": "true"})
    assert s.level is Level.FULL_WITH_ALLOWED_SETS  # a RECORD_* variable never lowers it
    assert HookSettings.from_env({}).level is Level.SUMMARY
    with pytest.raises(ValueError, match="VLLM_AUDIT_PRESET='loud'; expected one of minimal"):
        HookSettings.from_env({"VLLM_AUDIT_PRESET": "loud"})


def test_register_says_what_the_seed_variables_it_cannot_honour_do() -> None:
    """Startup notes go to the log once, at registration; nothing is silently ignored."""
    from tests.hooks.test_register import run_python

    out = run_python(
        "import vllm_hooks\nvllm_hooks.register()\n",
        VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_AGENT_ADDRESS="/nonexistent/ingest.sock",
        VLLM_AUDIT_ASYNC="false", VLLM_AUDIT_LOG_DIR="/data/audit",
    )
    assert out.returncode == 0, out.stderr
    assert "VLLM_AUDIT_ASYNC=false is not offered" in out.stderr
    assert "--data-dir /data/audit" in out.stderr
