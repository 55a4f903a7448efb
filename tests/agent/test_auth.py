"""Authentication and authorisation of the query and control API, on the real agent over real
gRPC (plaintext loopback, TLS and mutual TLS with certificates made here)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.agent_harness import Hook, agent, agent_config, control, query
from tests.support.agent_harness import tokens_file as harness_tokens_file
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api.tokens import (
    ADMIN_TOKEN_FILE,
    ADMIN_TOKEN_PREFIX,
    TokenTable,
    ensure_admin_token,
)
from vllm_audit_agent.cli.client import ClientTls, aio_channel
from vllm_audit_agent.server import AgentHandle, running_agent

ROLES = {"aud": ("auditor", None), "ta": ("tenant-auditor", "acme"),
         "tb": ("tenant-auditor", "globex"), "op": ("operator", None), "adm": ("admin", None)}


def tokens_file(tmp: Path) -> Path:
    """Each entry's token is its name + '-secret'."""
    return harness_tokens_file(tmp, ROLES)


def http(rid: str, tenant: str, user: str, t: int) -> pb.Event:
    # A 4xx response makes the trail final at once (no engine half expected).
    return pb.Event(time_unix_nano=t, request_id=rid, http=pb.HttpRequest(
        tenant=tenant, user=user, model="m", status_code=403))


async def seed(handle: AgentHandle) -> None:
    async with Hook(handle.state.config.ingest_socket) as hook:
        for i, (tenant, user) in enumerate([("acme", "alice"), ("globex", "bob"),
                                            ("acme", "carol"), ("globex", "alice")]):
            await hook.send(i + 1, http(f"r{i}", tenant, user, 10**15 + i))


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_no_or_unknown_credential_is_refused_by_query_and_control(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        async with grpc.aio.insecure_channel(handle.query_address) as bare:
            for call in (query_pb2_grpc.QueryServiceStub(bare).Health(q.HealthRequest()),
                         query_pb2_grpc.QueryServiceStub(bare).ListTrails(q.ListTrailsRequest()),
                         query_pb2_grpc.ControlServiceStub(bare).SetAuditLevel(
                             q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_OFF))):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization: Bearer" in str(refused.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await query(handle, token="not-a-token").Health(q.HealthRequest())
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not one this agent knows" in str(wrong.value.details())
        assert handle.state.counters["auth_unauthenticated"] == 4
        assert handle.state.counters["auth_permission_denied"] == 0
        assert handle.state.level == pb.AUDIT_LEVEL_SUMMARY  # the refused set-level did nothing
        # The local admin token works for both.
        assert (await query(handle).Health(q.HealthRequest())).status == "SERVING"
        await control(handle).SetAuditLevel(q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_FULL))


async def test_each_role_is_allowed_and_refused_exactly_where_it_should_be(tmp_path: Path) -> None:
    expected = {  # method -> roles allowed
        "Health": {"aud", "ta", "tb", "op", "adm"},
        "GetStats": {"aud", "op", "adm"},
        "ListTrails": {"aud", "ta", "tb", "adm"},
        "GetTrail": {"aud", "ta", "tb", "adm"},
        "SetAuditLevel": {"op", "adm"},
    }
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        assert not (handle.state.config.data_dir / ADMIN_TOKEN_FILE).exists()
        await seed(handle)
        denied = 0
        for name in ROLES:
            qs, cs = query(handle, f"{name}-secret"), control(handle, f"{name}-secret")
            calls = {
                "Health": qs.Health(q.HealthRequest()),
                "GetStats": qs.GetStats(q.StatsRequest()),
                "ListTrails": qs.ListTrails(q.ListTrailsRequest()),
                "GetTrail": qs.GetTrail(q.GetTrailRequest(request_id="r0")),
                "SetAuditLevel": cs.SetAuditLevel(q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_FULL)),
            }
            for method, call in calls.items():
                code = await code_of(call)
                if name in expected[method]:
                    # tb (globex) cannot see acme's r0: not found, not refused.
                    want = grpc.StatusCode.NOT_FOUND if (name, method) == ("tb", "GetTrail") \
                        else grpc.StatusCode.OK
                    assert code == want, (name, method, code)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, method, code)
                    denied += 1
        assert handle.state.counters["auth_permission_denied"] == denied == 7
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control(handle, "aud-secret").SetAuditLevel(
                q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_OFF))
        assert "needs role admin or operator; 'aud' has role auditor" in str(
            refused.value.details())


async def test_a_tenant_auditor_reads_only_its_tenant_by_any_filter(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        await seed(handle)
        acme = query(handle, "ta-secret")

        async def ids(**filters: object) -> list[str]:
            page = await acme.ListTrails(q.ListTrailsRequest(**filters))  # type: ignore[arg-type]
            return [t.request_id for t in page.trails]

        assert await ids() == ["r2", "r0"]  # newest first
        assert await ids(tenant="acme") == ["r2", "r0"]
        assert await ids(tenant="globex") == []
        assert await ids(user="alice") == ["r0"]  # globex's alice stays hidden
        assert await ids(user="bob") == []
        assert (await acme.GetTrail(q.GetTrailRequest(request_id="r0"))).summary.tenant == "acme"
        for other in ("r1", "r3"):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await acme.GetTrail(q.GetTrailRequest(request_id=other))
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
            # The same answer as for a trail that does not exist: nothing leaks.
            assert hidden.value.details() == f"no trail for request id {other!r}"
        # A watch replays only the caller's tenant, whatever it asks for.
        own = acme.WatchTrails(q.WatchTrailsRequest(replay=True))
        got = [(await asyncio.wait_for(own.read(), 5)).trail.request_id for _ in range(2)]
        assert got == ["r0", "r2"]
        other = acme.WatchTrails(q.WatchTrailsRequest(replay=True, tenant="globex"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.read(), 1.0)
        # ...and then only its tenant's new trails.
        async with Hook(handle.state.config.ingest_socket, source="src-2") as hook:
            await hook.send(1, http("r4", "globex", "dave", 10**15 + 9))
            await hook.send(2, http("r5", "acme", "erin", 10**15 + 10))
        assert (await asyncio.wait_for(own.read(), 5)).trail.request_id == "r5"
        own.cancel()
        other.cancel()
        # An auditor sees all of them.
        page = await query(handle, "aud-secret").ListTrails(q.ListTrailsRequest())
        assert [t.request_id for t in page.trails] == ["r5", "r4", "r3", "r2", "r1", "r0"]


async def test_every_authorised_call_reaches_the_audit_sink_once(tmp_path: Path) -> None:
    calls: list[tuple[str, str, dict[str, object], int]] = []
    config = agent_config(tmp_path, auth_tokens_file=tokens_file(tmp_path))
    async with running_agent(config, audit_sink=lambda p, m, d, n, **_: calls.append(
            (p.subject, m, d, n))) as handle:
        await seed(handle)
        await query(handle, "aud-secret").ListTrails(q.ListTrailsRequest(user="alice"))
        await code_of(query(handle, "ta-secret").GetTrail(q.GetTrailRequest(request_id="r1")))
        await code_of(query(handle, "ta-secret").GetStats(q.StatsRequest()))  # refused: no call
        await control(handle, "op-secret").SetAuditLevel(
            q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_OFF))
    assert [(s, m.rsplit("/", 1)[1], n) for s, m, _, n in calls] == [
        ("aud", "ListTrails", 2), ("ta", "GetTrail", 0), ("op", "SetAuditLevel", 0)]
    assert calls[0][2] == {"user": "alice"}
    assert calls[2][2] == {"level": "AUDIT_LEVEL_OFF"}


async def test_local_admin_token_is_private_kept_and_used_by_the_cli(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        data_dir = handle.state.config.data_dir
        token_path = data_dir / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        first = token_path.read_text()
        # Never an option's look-alike: a token starting with "-" broke `--token <it>`.
        assert first.startswith(ADMIN_TOKEN_PREFIX)
        made = {ensure_admin_token(tmp_path / f"d{i}") for i in range(200)}
        assert len(made) == 200 and not any(t.startswith("-") for t in made)
        env = {**os.environ, "VLLM_AUDIT_DATA_DIR": str(data_dir)}
        env.pop("VLLM_AUDIT_TOKEN", None)
        cli = [sys.executable, "-m", "vllm_audit_agent.cli"]
        ok = await asyncio.to_thread(subprocess.run, [*cli, "query", "--address",
                                                      handle.query_address, "health"],
                                     env=env, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        assert orjson.loads(ok.stdout)["status"] == "SERVING"
        env.pop("VLLM_AUDIT_DATA_DIR")
        refused = await asyncio.to_thread(
            subprocess.run, [*cli, "query", "--address", handle.query_address,
                             "--data-dir", str(tmp_path / "elsewhere"), "health"],
            env=env, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1
        assert "UNAUTHENTICATED" in refused.stderr
    async with agent(tmp_path) as (handle, _):  # a restart keeps the same token
        assert token_path.read_text() == first
        assert (await query(handle).Health(q.HealthRequest())).status == "SERVING"


async def test_plaintext_beyond_loopback_needs_tls_or_the_explicit_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reachable beyond this machine and TLS is not configured"):
        async with running_agent(agent_config(tmp_path, query_address="0.0.0.0:0")):
            pass
    assert not (tmp_path / "ingest.sock").exists()  # refused before anything started
    async with running_agent(agent_config(tmp_path, query_address="0.0.0.0:0",
                                          allow_insecure_remote=True)) as handle:
        assert handle.state.ready


def test_the_agent_process_refuses_to_start_with_the_reason(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vllm_audit_agent.cli", "agent", "--query-address", "0.0.0.0:0",
         "--http-address", "127.0.0.1:0", "--ingest-socket", str(tmp_path / "s.sock"),
         "--data-dir", str(tmp_path / "d"), "--gpu", "none"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--allow-insecure-remote" in out.stderr and "TLS" in out.stderr


def test_a_bad_tokens_file_names_the_entry_at_fault(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(orjson.dumps([{"sha256": "ab" * 32, "subject": "x", "role": "tenant-auditor"}])
                    .decode())
    with pytest.raises(ValueError, match="entry 0: a tenant-auditor needs a tenant"):
        TokenTable.from_file(path)
    path.write_text(orjson.dumps([{"token": "plain", "subject": "x", "role": "admin"}]).decode())
    with pytest.raises(ValueError, match="unknown keys"):
        TokenTable.from_file(path)
    path.write_text(orjson.dumps([{"sha256": "ab" * 32, "subject": "x", "role": "root"}]).decode())
    with pytest.raises(ValueError, match="role 'root' is not one of"):
        TokenTable.from_file(path)


async def test_ingest_socket_is_0660_with_the_configured_group(tmp_path: Path) -> None:
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    async with agent(tmp_path, ingest_socket_group=str(gid)) as (handle, _):
        st = handle.state.config.ingest_socket.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    with pytest.raises(ValueError, match="group 'no-such-group-xyz' does not exist"):
        async with agent(tmp_path, ingest_socket_group="no-such-group-xyz"):
            pass


# -- TLS ---------------------------------------------------------------------------------------
def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey]
          | None, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        out[f"{name}.crt"] = tmp / f"{name}.crt"
        out[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            out[f"{name}.key"] = tmp / f"{name}.key"
            out[f"{name}.key"].write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    write("ca", _cert("test-ca", ca_key, None, ca=True), None)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _cert(name, key, ("test-ca", ca_key), ca=False), key)
    return out


async def test_tls_and_mutual_tls_on_the_query_listener(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = {"tls_cert": pki["server.crt"], "tls_key": pki["server.key"]}
    async with agent(tmp_path, **tls) as (handle, _):
        token = (handle.state.config.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        async with aio_channel(handle.query_address, token, ClientTls(ca=pki["ca.crt"])) as chan:
            health = await query_pb2_grpc.QueryServiceStub(chan).Health(q.HealthRequest())
            assert health.status == "SERVING"
        async with aio_channel(handle.query_address, None, ClientTls(ca=pki["ca.crt"])) as chan:
            assert await code_of(query_pb2_grpc.QueryServiceStub(chan).Health(
                q.HealthRequest())) == grpc.StatusCode.UNAUTHENTICATED
        async with aio_channel(handle.query_address, token) as plain:  # no TLS: no answer
            assert await code_of(query_pb2_grpc.QueryServiceStub(plain).Health(
                q.HealthRequest(), timeout=3)) in (grpc.StatusCode.UNAVAILABLE,
                                                   grpc.StatusCode.DEADLINE_EXCEEDED)
    # Mutual TLS: a client certificate from the configured CA is required, plus a token.
    async with agent(tmp_path, tls_client_ca=pki["ca.crt"], **tls) as (handle, _):
        token = (handle.state.config.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        async with aio_channel(handle.query_address, token, ClientTls(
                ca=pki["ca.crt"], cert=pki["client.crt"], key=pki["client.key"])) as chan:
            health = await query_pb2_grpc.QueryServiceStub(chan).Health(q.HealthRequest())
            assert health.status == "SERVING"
        async with aio_channel(handle.query_address, token, ClientTls(ca=pki["ca.crt"])) as chan:
            assert await code_of(query_pb2_grpc.QueryServiceStub(chan).Health(
                q.HealthRequest(), timeout=3)) in (grpc.StatusCode.UNAVAILABLE,
                                                   grpc.StatusCode.DEADLINE_EXCEEDED)
    # TLS makes a public address acceptable without the explicit flag.
    async with running_agent(agent_config(tmp_path, query_address="0.0.0.0:0", **tls)) as handle:
        assert handle.state.ready


async def test_the_standard_health_service_needs_no_credential(tmp_path: Path) -> None:
    """kubelet's gRPC probe carries no token: the interceptor lets grpc.health.v1 through."""
    from collections import Counter

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from vllm_audit_agent.api.auth_interceptor import AuthInterceptor
    from vllm_audit_agent.api.query import QueryServicer

    counters: Counter[str] = Counter()
    server = grpc.aio.server(interceptors=[AuthInterceptor(TokenTable(), counters)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(None), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            reply = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert await code_of(query_pb2_grpc.QueryServiceStub(chan).Health(
                q.HealthRequest())) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
    assert counters["auth_unauthenticated"] == 1


async def test_metrics_behind_a_token_when_configured(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    token_file = tmp_path / "metrics.token"
    token_file.write_text("scrape-secret\n")

    def get(url: str, token: str | None) -> int:
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async with agent(tmp_path, metrics_token_file=token_file) as (handle, _):
        base = f"http://{handle.http_address}"
        assert await asyncio.to_thread(get, base + "/metrics", None) == 401
        assert await asyncio.to_thread(get, base + "/metrics", "wrong") == 401
        assert await asyncio.to_thread(get, base + "/metrics", "scrape-secret") == 200
        assert await asyncio.to_thread(get, base + "/readyz", None) == 200  # probes stay open
    async with agent(tmp_path) as (handle, _):  # not configured: open, as before
        assert await asyncio.to_thread(get, f"http://{handle.http_address}/metrics", None) == 200
