"""Every hook variable: a bad value is refused with a message that names the variable (and the
value), so the start-up error tells the operator which line of their environment to fix.

The table below must name every variable of `vllm_hooks.config.env_vars`: a variable added
without a bad value here (or a reason it has none) fails `test_the_table_covers_every_variable`.
"""

from __future__ import annotations

import pytest

from vllm_hooks.config import env_vars
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.config.start_policy import start_policy

#: variable -> bad values, each refused naming the variable.
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "VLLM_AUDIT_AGENT_ADDRESS": ("relative/ingest.sock", "agent:port", "host:0", "host:70000"),
    "VLLM_AUDIT_LEVEL": ("verbose", "loud", "FULL WITH SETS"),
    "VLLM_AUDIT_PRESET": ("paranoid",),
    "VLLM_AUDIT_BUFFER_EVENTS": ("lots", "0", "-1", "1.5"),
    "VLLM_AUDIT_UNACKED_BYTES": ("64MiB", "0"),
    "VLLM_AUDIT_BATCH_EVENTS": ("many", "0"),
    "VLLM_AUDIT_FLUSH_MS": ("20ms", "-5"),
    "VLLM_AUDIT_MAX_BATCH_BYTES": ("1MiB", "100"),
    "VLLM_AUDIT_MAX_MESSAGE_BYTES": ("8MiB", "4096", "4294967296"),
    "VLLM_AUDIT_ACK_TIMEOUT_MS": ("soon", "0"),
    "VLLM_AUDIT_CAPTURE_PROMPT": ("raw", "everything"),
    "VLLM_AUDIT_CAPTURE_OUTPUT": ("raw",),
    "VLLM_AUDIT_CAPTURE_CLIENT_IP": ("hash",),
    "VLLM_AUDIT_TENANT_HEADER": ("x tenant", "x-tenant:"),
    "VLLM_AUDIT_USER_HEADER": ("user name",),
    "VLLM_AUDIT_TRUSTED_PROXIES": ("10.0.0.0/33", "proxy.local"),
    "VLLM_AUDIT_IDENTITY_FILE": ("/nonexistent/identities.yaml",),
    "VLLM_AUDIT_RECORD_ALLOWED_TOKENS": ("si",),
    "VLLM_AUDIT_RECORD_FULL_EVENTS": ("all",),
    "VLLM_AUDIT_INCLUDE_GRAMMAR": ("si",),
    "VLLM_AUDIT_GRAMMAR_MAX_BYTES": ("big", "0"),
    "VLLM_AUDIT_ALLOWED_SET_MAX_BYTES": ("12KiB", "0"),
    "VLLM_AUDIT_ALLOWED_SETS_TRAIL_MAX_BYTES": ("1MiB",),
    "VLLM_AUDIT_ALLOWED_SETS_BACKLOG_BYTES": ("64MiB",),
    "VLLM_AUDIT_ASYNC": ("sync",),
    "VLLM_AUDIT_PERSIST": ("disk",),
    "VLLM_AUDIT_IN_RESPONSE": ("y e s",),
    "VLLM_AUDIT_RESPONSE_LEVEL": ("verbose",),
    # Set without a token, the query API could only refuse (UNAUTHENTICATED).
    "VLLM_AUDIT_QUERY_ADDRESS": ("127.0.0.1:50051", "agent", "agent:http"),
    "VLLM_AUDIT_RESPONSE_TIMEOUT_MS": ("500ms", "0"),
    "VLLM_AUDIT_SELF_TIMING": ("maybe",),
    "VLLM_AUDIT_MAX_TRAILS": ("0", "all"),
    "VLLM_AUDIT_REQUIRED_WAIT_SECONDS": ("ten",),
    "VLLM_AUDIT_DIGEST_CACHE": ("digests.json", "./cache/digests.json"),
    "VLLM_AUDIT_SIGNALS": ("maybe",),
    "VLLM_AUDIT_SIGNALS_MAX_CHARS": ("64KiB", "0", "-1"),
}
#: Variables with no bad value, and why.
ANY_VALUE = {
    # The switches are read leniently on purpose (start_policy.py): they must answer even when
    # every other setting is invalid, and anything but a yes-word is off.
    "VLLM_AUDIT_ENABLED": "switch",
    "VLLM_STRUCTURED_OUTPUT_AUDIT": "switch",
    "VLLM_AUDIT_FAIL_OPEN": "switch",
    "VLLM_AUDIT_REQUIRED": "switch",
    "VLLM_AUDIT_HMAC_KEY": "any bytes are a key",
    "VLLM_AUDIT_QUERY_TOKEN": "any text is a token (the agent judges it)",
    "VLLM_AUDIT_LOG_DIR": "only named in a start-up note (the agent's --data-dir)",
    "VLLM_AUDIT_INSTANCE_KEY": "made by the hook itself; any text is a key",
}


def test_the_table_covers_every_variable() -> None:
    declared = {value for name, value in vars(env_vars).items() if name.startswith("ENV_")}
    assert declared == set(BAD_VALUES) | set(ANY_VALUE)
    assert not set(BAD_VALUES) & set(ANY_VALUE)


@pytest.mark.parametrize(("name", "value"),
                         [(n, v) for n, values in BAD_VALUES.items() for v in values])
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    env = {name: value}
    with pytest.raises(ValueError) as info:
        if name == "VLLM_AUDIT_REQUIRED_WAIT_SECONDS":
            start_policy(env)
        else:
            HookSettings.from_env(env)
    message = str(info.value)
    assert name in message, message
    assert value in message, message


def test_query_address_with_its_token_and_addresses_that_are_good() -> None:
    s = HookSettings.from_env({"VLLM_AUDIT_QUERY_ADDRESS": "agent:50051",
                               "VLLM_AUDIT_QUERY_TOKEN": "t"})
    assert (s.query_address, s.query_token) == ("agent:50051", "t")
    assert HookSettings.from_env({"VLLM_AUDIT_QUERY_TOKEN": "t"}).query_address == \
        env_vars.DEFAULT_QUERY_ADDRESS
    for address in ("/run/a.sock", "unix:/run/a.sock", "127.0.0.1:7000", "[::1]:7000",
                    "dns:///agent:7000"):
        assert HookSettings.from_env({"VLLM_AUDIT_AGENT_ADDRESS": address}).agent_address == \
            address
