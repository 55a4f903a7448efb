"""Hook parts that need no vLLM: buffer, capture policy, settings, popcount."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vllm_hooks.buffer import EventBuffer
from vllm_hooks.capture import CapturePolicy, luhn_valid, redact
from vllm_hooks.grammar_tap import allowed_counts
from vllm_hooks.settings import HookSettings, Level


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
