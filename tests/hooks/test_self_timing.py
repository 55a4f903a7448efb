"""Self-timing (VLLM_AUDIT_SELF_TIMING): the hook's cost measured where it is paid, reported to
the real agent and exported there; with the mode off nothing is measured or exported.

No assertion here depends on how fast anything runs: region accounting is checked with a
clock the test advances, the rest only for presence and non-zero figures."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.hooks.test_middleware_identity import echo_app
from tests.support.agent_harness import agent, until
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.env_vars import ENV_SELF_TIMING
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.middleware import _RequestAudit

FINISHED = raw.FINISHED


def test_nested_regions_count_hook_and_vllm_time_once_each() -> None:
    now = [0]
    timer = SelfTimer(clock=lambda: now[0])

    def advance(ns: int) -> None:
        now[0] += ns

    # hook(3) -> vLLM(100) -> hook(7) -> vLLM(50): as grammar_bitmask -> fill_bitmask.
    inner_vllm = timer.vllm_region(lambda: advance(50))
    inner_hook = timer.hook_region(lambda: (advance(7), inner_vllm()))
    outer_vllm = timer.vllm_region(lambda: (advance(100), inner_hook()))
    outer_hook = timer.hook_region(lambda: (advance(3), outer_vllm()))
    outer_hook()
    assert timer.hook_ns == 10
    assert timer.hook_calls == 2


def test_a_region_that_raises_is_still_counted_on_both_sides() -> None:
    now = [0]
    timer = SelfTimer(clock=lambda: now[0])

    def boom() -> None:
        now[0] += 5
        raise ValueError("vLLM raised")

    hook = timer.hook_region(lambda: (now.__setitem__(0, now[0] + 2), timer.vllm_region(boom)()))
    for _ in range(2):
        with contextlib.suppress(ValueError):
            hook()
    assert (timer.hook_ns, timer.hook_calls, timer.vllm_ns) == (4, 2, 10)


def test_the_setting_is_off_by_default_and_a_wrong_value_names_the_variable() -> None:
    assert HookSettings.from_env({}).self_timing is False
    assert HookSettings.from_env({ENV_SELF_TIMING: "true"}).self_timing is True
    try:
        HookSettings.from_env({ENV_SELF_TIMING: "maybe"})
    except ValueError as exc:
        assert ENV_SELF_TIMING in str(exc)
    else:
        raise AssertionError("an invalid value was accepted")


def test_the_middleware_parses_nothing_on_the_loop_and_the_sender_gets_the_same_fields() -> None:
    timer = SelfTimer()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"user-agent", b"t")], "client": ("10.0.0.1", 5555)}
    audit = _RequestAudit(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"model": "m", "user": "u", "messages": '
                b'[{"role": "user", "content": "hi"}]}', "more_body": False}

    async def send(message: Any) -> None:
        pass

    asyncio.run(echo_app(audit.scope, audit.wrap_receive(receive, timer),
                         audit.wrap_send(send, timer)))
    assert timer.middleware_ns > 0 and timer.hook_ns == 0  # one receive, two sends
    event = audit.raw_event()
    # The loop hands over the kept bytes unparsed: no model or prompt field was read there.
    assert event[0] == raw.HTTP_UNPARSED
    assert "model" not in event[3] and "prompt" not in event[3]
    settings = HookSettings(enabled=True, capture_prompt="full")
    converted = EventConverter(settings, CapturePolicy(b"k")).to_proto(event).http
    assert (converted.model, converted.user, converted.prompt) == ("m", "u", "user: hi")
    assert converted.status_code == 200 and converted.client_ip != ""
    # The body's user is read with the body, off the loop, and recorded as claimed.
    assert (converted.claimed_user, converted.user_source) == ("u", pb.IDENTITY_SOURCE_CLAIMED)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {f.name: [(s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(text)}


def finished(i: int) -> tuple[object, ...]:
    return (raw.LIFECYCLE, 10**18 + i, f"req{i:04d}-abcdefgh", FINISHED, 3, 5, "stop",
            "FINISHED_STOPPED", 16, False)


async def test_figures_reach_the_agent_and_are_exported_per_source(tmp_path: Path) -> None:
    timer = SelfTimer()
    async with agent(tmp_path) as (handle, _):
        url = f"http://{handle.http_address}/metrics"
        with running_sender(handle.state.config.ingest_socket, timer=timer) as (sender, buffer):
            offer = timer.hook_region(buffer.offer)
            for i in range(20):
                offer(finished(i))
                timer.step(4)
            await until(lambda: handle.state.counters["events"] == 20, "events stored")

            def reported() -> bool:
                timings = handle.state.self_timings()
                return bool(timings) and timings[0][2].steps == 20 \
                    and timings[0][2].sender_cpu_ns > 0

            # Figures reach the agent on event batches and, when only they changed, alone.
            await until(reported, "self-timing figures at the agent")
            families = await asyncio.to_thread(scrape, url)
        source = sender.source_id
        seconds = {s[0]["site"]: s[1] for s in families["vllm_audit_hook_self_seconds"]
                   if s[0].get("source") == source}
        assert seconds["engine"] > 0 and seconds["sender"] > 0
        assert seconds["stat_logger"] == seconds["middleware"] == 0  # born at 0
        steps = families["vllm_audit_hook_self_steps"]
        assert steps == [({"source": source, "role": "test"}, 20.0)]
        assert families["vllm_audit_hook_self_request_steps"] == [
            ({"source": source, "role": "test"}, 80.0)]
        calls = {s[0]["site"]: s[1] for s in families["vllm_audit_hook_self_calls"]}
        assert calls == {"engine": 20.0, "stat_logger": 0.0, "middleware": 0.0}


async def test_with_the_mode_off_nothing_is_reported_or_exported(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        url = f"http://{handle.http_address}/metrics"
        with running_sender(handle.state.config.ingest_socket) as (_sender, buffer):
            for i in range(5):
                buffer.offer(finished(i))
            await until(lambda: handle.state.counters["events"] == 5, "events stored")
            assert len(handle.state.sessions) == 1
            families = await asyncio.to_thread(scrape, url)
        assert handle.state.self_timings() == []
        assert not [name for name in families if name.startswith("vllm_audit_hook_self")]


class NullGrammar:
    """Stands in for a backend grammar: the test is about the hook's wrappers, which treat
    every backend alike (the e2e tests run the real ones)."""

    def __init__(self) -> None:
        self.accepted: list[int] = []

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        self.accepted += tokens
        return tokens != [13]  # the "grammar" refuses token 13

    def fill_bitmask(self, bitmask: Any, batch_index: int) -> None:
        bitmask[batch_index] = -1 if len(self.accepted) % 2 else 0x0F0F

    def is_terminated(self) -> bool:
        return len(self.accepted) >= 3


def drive(level: str, timer: SelfTimer | None) -> list[Any]:
    """Three steps of two structured requests through the adapter's real wrappers."""
    import numpy as np

    from vllm_hooks.config.levels import Level
    from vllm_hooks.runtime import HookRuntime
    from vllm_hooks.vllm.grammar_tap import BitmaskTap
    from vllm_hooks.vllm.structured_output_patch import wrap_structured_output_manager

    bitmask = np.zeros((2, 4), dtype=np.int32)

    class Manager:
        def _create_grammar(self, request: Any) -> Any:
            return NullGrammar()

        def grammar_bitmask(self, requests: dict[str, Any], ids: list[str],
                            spec: dict[str, list[int]]) -> Any:
            for i, rid in enumerate(ids):
                requests[rid].structured_output_request._grammar.fill_bitmask(bitmask, i)
            return bitmask

    rt = HookRuntime(HookSettings(enabled=True, level=Level.parse(level)), "test")
    rt.timer = timer
    manager = Manager()
    wrap_structured_output_manager(manager, BitmaskTap(rt, 100))
    requests: dict[str, Any] = {}
    for rid in ("a", "b"):
        from types import SimpleNamespace

        so = SimpleNamespace(structured_output_key=(SimpleNamespace(name="JSON"), "{}"))
        request = SimpleNamespace(request_id=rid, structured_output_request=so,
                                  sampling_params=SimpleNamespace(
                                      structured_outputs=SimpleNamespace(_backend="null")))
        so._grammar = manager._create_grammar(request)
        requests[rid] = request
    for tokens in ([5], [13], [7]):
        manager.grammar_bitmask(requests, ["a", "b"], {})
        for rid in ("a", "b"):
            requests[rid].structured_output_request._grammar.accept_tokens(rid, tokens)
    for rid in ("a", "b"):
        requests[rid].structured_output_request._grammar.finish("FINISHED_STOPPED")
    # Converted as the sender does; times (event times, compile time) differ between runs,
    # everything else must not.
    converter = EventConverter(rt.settings, CapturePolicy(b"k"))
    events = [e for r in rt.buffer.drain(1000) for e in converter.convert(r)]
    for event in events:
        event.time_unix_nano = 0
        if event.HasField("grammar_compiled"):
            event.grammar_compiled.compile_ms = 0.0
    return events


def test_timed_wrappers_record_exactly_what_the_untimed_ones_do() -> None:
    for level in ("summary", "key-events", "full", "full-with-allowed-sets"):
        timer = SelfTimer()
        timed = drive(level, timer)
        assert timed == drive(level, None), level
        assert timer.hook_calls > 0 and timer.hook_ns > 0
    assert any(e.HasField("so_steps") for e in timed)  # the last level records steps
