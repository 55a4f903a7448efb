"""Wires the agent in one place. Only the entry point (cli.py) reads flags and signals; the
shutdown trigger is injected.

Start: WAL (replayed into the trail store; the record log de-duplicates what it already
holds) -> record log writer -> publisher (from its cursor) -> witnesses' cosigner -> GPU
sampler -> gRPC ingest (Unix socket) and query (TCP) -> HTTP (metrics, probes, management
API) -> ready.
Stop: not ready -> stop accepting (gRPC grace) -> flush trails -> record log (what the flush
produced, then a signed checkpoint) -> flush publisher (one deadline, reports what it left)
-> release NVML.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # public as health.aio, which mypy cannot see
from prometheus_client import CollectorRegistry

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from vllm_audit_agent.api.auth_interceptor import AuthInterceptor
from vllm_audit_agent.api.collectors import make_registry
from vllm_audit_agent.api.evidence_metrics import EvidenceCollector
from vllm_audit_agent.api.findings import LogFindings
from vllm_audit_agent.api.gate import AuditSink
from vllm_audit_agent.api.http_api import ManagementApi, disabled_routes, http_api_allowed
from vllm_audit_agent.api.http_endpoint import HttpEndpoint
from vllm_audit_agent.api.meta_audit import RecordLogAuditSink
from vllm_audit_agent.api.operations import AuditApi
from vllm_audit_agent.api.query import ControlServicer, QueryServicer
from vllm_audit_agent.api.rate_limit import TokenBuckets
from vllm_audit_agent.api.tls import check_listener, http_ssl_context, server_credentials
from vllm_audit_agent.api.tokens import load_token_table, metrics_token_hash
from vllm_audit_agent.api.usage import load_price_table
from vllm_audit_agent.api.witness_metrics import WitnessCollector
from vllm_audit_agent.archive.layout import parse_archive_url
from vllm_audit_agent.archive.metrics import ArchiveCollector
from vllm_audit_agent.archive.store import S3Store, s3_client
from vllm_audit_agent.archive.uploader import Archiver
from vllm_audit_agent.config import AgentConfig, kafka_copies, parse_address
from vllm_audit_agent.delivery.anchor_check import check_against_witnesses
from vllm_audit_agent.delivery.cosigning import Cosigner
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher, KafkaSink
from vllm_audit_agent.delivery.no_kafka import NoKafkaPublisher
from vllm_audit_agent.delivery.otlp_export import OtlpExporter
from vllm_audit_agent.delivery.publisher import Publisher
from vllm_audit_agent.delivery.siem_copies import SiemCopySink
from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.metrics import DetectionCollector
from vllm_audit_agent.detections.runner import DetectionRunner
from vllm_audit_agent.detections.settings import load_settings
from vllm_audit_agent.ingest.replay_bound import recall_since_ms
from vllm_audit_agent.ingest.service import IngestServicer, replay_wal
from vllm_audit_agent.log_limit import LIMITED_LOGGERS, LogRateLimit
from vllm_audit_agent.log_limit import install as install_log_limit
from vllm_audit_agent.records.chain import load_or_create_signer
from vllm_audit_agent.records.content_keys import ContentKeyStore
from vllm_audit_agent.records.identity import identity_from_env
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.storage.datadir import DataDirLock
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.gpu import FakeGpuReader, GpuReader, GpuSampler, NvmlReader
from vllm_audit_agent.trails.index import TrailIndex

logger = logging.getLogger("vllm_audit.agent")

#: What each server reports through the standard gRPC health service ("" is the whole server),
#: so Kubernetes `grpc:` probes and grpc_health_probe work without our own client.
INGEST_HEALTH = ("", ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name)
QUERY_HEALTH = ("", query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
                query_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name)

SWEEP_INTERVAL_S = 0.5
#: Trails the linger sweep finalises before it lets the loop serve ingest again.
SWEEP_BATCH = 1000
#: Seconds the OTLP export gets at a stop to send the spans it holds (after the record log's).
OTLP_STOP_S = 2.0


@dataclass
class AgentHandle:
    state: AgentState
    query_address: str
    http_address: str
    index: TrailIndex | None = None
    audit_sink: AuditSink | None = None


def _gpu_reader(kind: str) -> GpuReader | None:
    if kind == "nvml":
        return NvmlReader()
    if kind == "fake":
        return FakeGpuReader()
    return None


#: The start-time check waits at most this long for each witness (the agent is not ready
#: meanwhile); a witness that does not answer is counted and skipped.
START_CHECK_TIMEOUT_S = 5.0

def _record_log(config: AgentConfig, kind: Callable[..., RecordLog] = RecordLog,
                recall_since_ms: int | None = None) -> RecordLog:
    """`kind`: RecordLog, or a subclass (tests inject failures with one); `recall_since_ms`:
    how far back its start reads records, for the ingest WAL's replay (replay_bound.py)."""
    return kind(config.data_dir / "records", config.record_log_max_bytes, config.wal_fsync,
                     load_or_create_signer(config.signing_key_file, config.data_dir),
                     retention_days=config.record_retention_days,
                     checkpoint_every=config.checkpoint_every,
                     checkpoint_interval=config.checkpoint_interval_seconds,
                     access_budget_bytes=config.access_records_max_bytes or None,
                     expire_by_size=config.record_expire_by_size,
                     identity=identity_from_env(),
                     # Retention deletes whole segments: ~1/16 of the cap each.
                     segment_bytes=max(1024, min(64 << 20, config.record_log_max_bytes // 16)),
                     recall_since_ms=recall_since_ms)


#: The start-up warning for content keys inside the data directory.
CONTENT_KEYS_IN_DATA_DIR_WARNING = (
    "the content keys %s are inside the data directory %s: a copy of that directory (a backup, "
    "a volume snapshot) keeps keys that erasure or content expiry destroys here, and with them "
    "the content; put --content-key-dir on a volume of its own that is not backed up with it")


def _content_keys(config: AgentConfig, records: RecordLog) -> ContentKeyStore | None:
    """The content key store (None: sealing off), after destroying any key an erasure record
    of the log names that is still there (the agent stopped between the two)."""
    if config.content_plaintext:
        return None
    directory = config.content_key_dir or config.data_dir / "content-keys"
    if directory.resolve().is_relative_to(config.data_dir.resolve()):
        logger.warning(CONTENT_KEYS_IN_DATA_DIR_WARNING, directory, config.data_dir)
    keys = ContentKeyStore(directory, int(config.content_key_period_seconds * 1000))
    if keys.destroy(records.erased_content_keys):
        logger.warning("content keys named by an erasure record were still present; destroyed")
    records.erased_content_keys = []
    return keys


def _archiver(config: AgentConfig, records: RecordLog) -> Archiver | None:
    """The WORM archive's uploader, started; from here on retention holds what it has not
    archived (it lists the archive first)."""
    if config.archive_url is None:
        return None
    store = S3Store(parse_archive_url(config.archive_url), s3_client(config.archive_endpoint),
                    config.archive_retention_days)
    archiver = Archiver(records, store, config.data_dir / "archive-dead-letter")
    archiver.start()
    return archiver


def _detections(config: AgentConfig, records: RecordLog) -> DetectionRunner | None:
    """The rule engine over this log's records (--detections), started; its thresholds file
    is read here, so a wrong one fails the start."""
    if not config.detections:
        return None
    runner = DetectionRunner(RuleEngine(load_settings(config.detection_rules_file), "pod"),
                             records)
    runner.start()
    return runner


def _findings(records: RecordLog, detections: DetectionRunner | None) -> LogFindings | None:
    """What ListFindings lists: listening before the rules' first finding, the log's earlier
    ones read beside ingest (without the rules the call is refused with the reason)."""
    if detections is None:
        return None
    findings = LogFindings(records)
    findings.start()
    return findings


def _register(registry: CollectorRegistry, records: RecordLog, cosigner: Cosigner | None,
              archiver: Archiver | None, detections: DetectionRunner | None) -> None:
    """The collectors of the optional parts, beside make_registry's."""
    registry.register(DetectionCollector(detections.engine if detections else None, detections))
    if cosigner is not None:
        registry.register(WitnessCollector(cosigner))
    registry.register(EvidenceCollector(records))
    if archiver is not None:
        registry.register(ArchiveCollector(archiver))


def _publisher(config: AgentConfig) -> Publisher:
    if config.kafka_bootstrap and config.kafka_formats:  # SIEM copies beside the records
        sink = KafkaSink(config.kafka_bootstrap, config.kafka_topic_prefix)
        return Publisher(SiemCopySink(sink, kafka_copies(config.kafka_formats)))
    if config.kafka_bootstrap:
        return KafkaPublisher(config.kafka_bootstrap, config.kafka_topic_prefix)
    return NoKafkaPublisher()


def _otlp(config: AgentConfig, records: RecordLog) -> OtlpExporter | None:
    """The OTLP span export of the request records (--otlp-endpoint), listening to the log."""
    if config.otlp_endpoint is None:
        return None
    exporter = OtlpExporter(config.otlp_endpoint)
    records.add_record_listener(exporter.offer)
    logger.info("exporting request records as spans to %s (OTLP gRPC)", config.otlp_endpoint)
    return exporter


async def _stop_otlp(exporter: OtlpExporter | None) -> None:
    """Sends the spans the export holds, within OTLP_STOP_S (best effort, as the export is)."""
    if exporter is not None:
        await asyncio.to_thread(exporter.stop, OTLP_STOP_S)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, publisher: Publisher | None = None,
                        gpu_reader: GpuReader | None = None,
                        shutdown_timeout: float | None = None,
                        audit_sink: AuditSink | None = None,
                        record_log: Callable[..., RecordLog] = RecordLog,
                        ) -> AsyncIterator[AgentHandle]:
    # Refuse an unsafe listener before touching anything.
    host = parse_address("query_address", config.query_address)[0]
    check_listener(host, config.tls_cert is not None, config.allow_insecure_remote)
    # One agent per data directory: a second one fails here (DataDirLocked names the holder),
    # before it opens the WAL. Held until the WAL is closed.
    # A broker or a disk that fails makes the same lines repeat many times a second. Installed
    # here, so it is removed however the agent ends, a failed start included (a filter left on
    # the root logger's handlers would limit whatever runs in this process next).
    log_limit = LogRateLimit(LIMITED_LOGGERS)
    remove_log_limit = install_log_limit(log_limit)
    try:
        with DataDirLock(config.data_dir):
            async with _running_agent(config, publisher, gpu_reader, shutdown_timeout,
                                      audit_sink, record_log, log_limit) as handle:
                yield handle
    finally:
        remove_log_limit()


@contextlib.asynccontextmanager
async def _running_agent(config: AgentConfig, publisher: Publisher | None,
                         gpu_reader: GpuReader | None,
                         shutdown_timeout: float | None,
                         audit_sink: AuditSink | None,
                         record_log: Callable[..., RecordLog],
                         log_limit: LogRateLimit) -> AsyncIterator[AgentHandle]:
    wal = WriteAheadLog(config.data_dir, config.wal_max_bytes, config.wal_fsync,
                        config.wal_segment_bytes or None)
    records = _record_log(config, record_log, recall_since_ms(wal))
    archiver = _archiver(config, records)  # before anything can reclaim the log
    publisher = publisher or _publisher(config)
    gpu = GpuSampler(gpu_reader or _gpu_reader(config.gpu), config.gpu_interval_seconds)
    state = AgentState(config, wal, publisher, gpu, records, _content_keys(config, records))
    state.log_limit = log_limit
    tokens = load_token_table(config.auth_tokens_file, config.data_dir)
    index = TrailIndex(state.trails)  # before the replay, so replayed trails are indexed
    if wal.torn_tail_bytes:
        state.agent_dropped["wal_torn_tail_bytes"] += wal.torn_tail_bytes
        logger.warning("WAL had a torn tail of %d bytes (truncated)", wal.torn_tail_bytes)
    if wal.damaged_records or wal.damaged_bytes:
        state.agent_dropped["wal_damaged_records"] += wal.damaged_records
        state.agent_dropped["wal_damaged_bytes"] += wal.damaged_bytes
        logger.warning("WAL had %d damaged records (%d bytes), kept in %s", wal.damaged_records,
                       wal.damaged_bytes, wal.quarantine_dir)
    if records.wal.damaged_records:
        state.agent_dropped["record_log_damaged_records"] += records.wal.damaged_records
        logger.warning("record log had %d damaged records (%d bytes), kept in %s",
                       records.wal.damaged_records, records.wal.damaged_bytes,
                       records.wal.quarantine_dir)
    if config.witnesses:  # before anything new is written: is this the log they saw?
        await check_against_witnesses(records, config.witnesses,
                                      min(config.witness_timeout_seconds, START_CHECK_TIMEOUT_S),
                                      records.counters)
    # The level in effect, on record when it is not the one the log last named: a change made
    # while the agent was down (the level file or the configuration) is a record too.
    levels = state.levels
    records.record_level(pb.AuditLevel.Name(levels.level),
                         f"at start, from the {levels.source}" if records.last_level is None
                         else f"changed outside the API: at start, from the {levels.source}")
    replayed = replay_wal(state.ingest, config.data_dir / "quarantine")
    # After the WAL replay: trails it rebuilt are recorded (or de-duplicated) as they are.
    state.trails.remember_recorded(records.take_recorded_trails())
    records.end_replay()
    if replayed:
        logger.info("replayed %d batches from the WAL", replayed)
    state.reclaim_wal()
    records.start()
    detections = _detections(config, records)
    findings = _findings(records, detections)
    otlp = _otlp(config, records)
    await publisher.start(records)
    # Each durable checkpoint is offered to the witnesses; nothing waits for them.
    cosigner = Cosigner(records, config.witnesses, config.witness_timeout_seconds) \
        if config.witnesses else None
    if cosigner is not None:
        cosigner.start()
    gpu.start()

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", config.max_message_bytes)])
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(
        state.ingest, state.levels, state.sessions, state.errors, config.max_batch_bytes), server)
    ingest_health = await _health(server, INGEST_HEALTH)
    _socket_directory(config.ingest_socket.parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.ingest_socket)  # a stale socket from a previous run
    # The socket file is made by bind() with the process's umask: under a permissive one it
    # would be connectable by anyone until the chmod below. Bound under 0177 it is the owner's
    # alone from its first moment; the chmod then opens it to the group only.
    umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{config.ingest_socket}")
    finally:
        os.umask(umask)
    _restrict_socket(config.ingest_socket, config.ingest_socket_group)
    # Every authorised query and control call is itself a record in the record log.
    auth = AuthInterceptor(tokens, state.counters,
                           audit_sink or RecordLogAuditSink(records, state.counters),
                           TokenBuckets(config.query_rate_per_token,
                                        2 * config.query_rate_per_token))
    refusal_windows = getattr(auth.audit_sink, "flush", None)
    query_server = grpc.aio.server(interceptors=[auth])
    # One implementation of every query/control/management call, two transports.
    api = AuditApi(state, index, prices=load_price_table(config.price_table_file))
    query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(api, findings), query_server)
    query_pb2_grpc.add_ControlServiceServicer_to_server(ControlServicer(api), query_server)
    query_health = await _health(query_server, QUERY_HEALTH)
    if config.tls_cert is not None and config.tls_key is not None:
        query_port = query_server.add_secure_port(config.query_address, server_credentials(
            config.tls_cert, config.tls_key, config.tls_client_ca))
    else:
        query_port = query_server.add_insecure_port(config.query_address)
    host = parse_address("query_address", config.query_address)[0]
    http_host, http_port = parse_address("http_address", config.http_address)
    refused = http_api_allowed(http_host, config.http_tls, config.allow_insecure_remote)
    if refused:
        logger.warning("%s", refused)
    registry = make_registry(state, otlp)
    _register(registry, records, cosigner, archiver, detections)
    http = HttpEndpoint(state, registry, disabled_routes(refused) if refused
                        else ManagementApi(api, auth.gate, findings).routes())
    if config.metrics_token_file is not None:
        http.metrics_token_sha256 = metrics_token_hash(config.metrics_token_file)
    ssl_context = None
    if config.http_tls and config.tls_cert is not None and config.tls_key is not None:
        ssl_context = http_ssl_context(config.tls_cert, config.tls_key, config.tls_client_ca)
    # First: a failed bind leaves no gRPC server running.
    await http.start(http_host, http_port, ssl_context)
    await server.start()
    await query_server.start()
    bound_http = http.port
    sweeper = asyncio.create_task(_sweep(state, refusal_windows))
    state.ready = True
    for servicer, names in ((ingest_health, INGEST_HEALTH), (query_health, QUERY_HEALTH)):
        for name in names:
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("agent ready: ingest unix:%s, query %s:%d, http %s:%d",
                config.ingest_socket, host, query_port, http_host, bound_http)
    try:
        yield AgentHandle(state, f"{host}:{query_port}", f"{http_host}:{bound_http}", index,
                          auth.audit_sink)
    finally:
        if cosigner is not None:  # first: a cosignature is a record, the log stops below
            await cosigner.stop(1.0)
        if archiver is not None:  # what it has not uploaded waits on the disk for the next start
            await archiver.stop(1.0)
        await _stop(state, server, query_server, sweeper, http, (ingest_health, query_health),
                    config.shutdown_timeout_seconds if shutdown_timeout is None
                    else shutdown_timeout, refusal_windows, detections, findings)
        await _stop_otlp(otlp)  # after the log's last records


def _socket_directory(directory: Path) -> None:
    """The ingest socket's directory: made 0750 (whatever the umask), and refused when anyone
    may write to it (they could replace the socket with their own)."""
    if not directory.exists():
        umask = os.umask(0o027)
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        finally:
            os.umask(umask)
    mode = directory.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise ValueError(f"the ingest socket's directory {directory} is writable by every user "
                         f"(mode {stat.S_IMODE(mode):o}): anyone could replace the socket; use a "
                         "directory only the agent (and vLLM's group) may write")


def _restrict_socket(path: os.PathLike[str], group: str | None) -> None:
    """The ingest socket: owner and (optionally) one group may connect, nobody else.

    Connecting to a Unix socket needs write permission on it; chmod right after bind (gRPC
    offers no mode), before the server accepts anything."""
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"ingest socket group {group!r} does not exist") from None
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)


async def _stop(state: AgentState, server: grpc.aio.Server, query_server: grpc.aio.Server,
                sweeper: asyncio.Task[None], http: HttpEndpoint,
                health: tuple[HealthServicer, ...], timeout: float,
                refusal_windows: Callable[..., None] | None = None,
                detections: DetectionRunner | None = None,
                findings: LogFindings | None = None) -> None:
    """Stops everything within one deadline, in order; each step gets what is left of it.

    Kubernetes sends SIGKILL `terminationGracePeriodSeconds` after SIGTERM, so a stop that
    outlives the deadline is cut short here, with what it left behind logged and counted,
    rather than there, silently. Whatever is left unpublished is still in the WAL."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left(reserve: float = 0.0) -> float:
        return max(0.0, deadline - loop.time() - reserve)

    state.ready = False
    for servicer in health:  # probes see NOT_SERVING before the servers stop
        await servicer.enter_graceful_shutdown()
    # Hooks get a moment to receive the acks of batches in flight; then streams are cut.
    grace = min(1.0, timeout / 10)
    # New batches are refused (shutting_down: the hooks keep them); stores under way finish.
    await state.ingest.stop(grace)
    await asyncio.gather(server.stop(grace=grace), query_server.stop(grace=grace))
    sweeper.cancel()
    if findings is not None:  # still reading the log's earlier findings: no one will ask
        findings.stop()
    # Open trails are not forced out: the WAL keeps them and the next start finishes them
    # (a record made up now would share its id with the real one that follows).
    open_trails = state.trails.open_trails()
    if refusal_windows is not None:  # refusal floods still counting: their records first
        refusal_windows(everything=True)
    if detections is not None:  # what the rules find in the last records is chained too
        await detections.stop(left(reserve=min(6.0, timeout / 2)))
    # The record log writes what is queued and a final signed checkpoint first.
    await state.records.stop(left(reserve=min(4.0, timeout / 3)))
    # Keep a little of the deadline for the steps after the publisher.
    lost = await state.publisher.stop(left(reserve=min(2.0, timeout / 5)))
    await asyncio.to_thread(state.gpu.stop, left())
    try:
        await asyncio.wait_for(http.stop(), max(0.1, left()))
    except TimeoutError:
        logger.warning("HTTP endpoint did not close within the shutdown deadline")
    state.records.close()
    state.stats_history.close()
    state.wal.close()
    logger.info("agent stopped in %.1fs (%d open trails are kept in the WAL and %d unpublished "
                "records in the record log for the next start)", timeout - left(), open_trails,
                lost)


async def _health(server: grpc.aio.Server, names: tuple[str, ...]) -> HealthServicer:
    """NOT_SERVING until the agent is ready (the servicer's own default is SERVING)."""
    servicer = HealthServicer()
    for name in names:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def _sweep(state: AgentState, refusal_windows: Callable[..., None] | None) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        try:
            more = state.trails.sweep(limit=SWEEP_BATCH)
            while more:
                await asyncio.sleep(0)  # ingest and queries run between the slices
                more = state.trails.sweep(limit=SWEEP_BATCH)
            state.reclaim_wal()
            if refusal_windows is not None:
                refusal_windows()  # refusal floods: one record per ended window
        except Exception as exc:
            state.errors["sweep"] += 1
            logger.exception("trail sweep failed: %r", exc)


#: gc.set_threshold for the agent process (see freeze_startup_heap).
COLLECTOR_THRESHOLDS = (200_000, 50, 20)


def freeze_startup_heap() -> None:
    """The objects of an agent process's start-up (modules, protobuf descriptors, the gRPC
    servers, the Kafka client) live as long as it does: collected once, then frozen, they are
    never walked again by a full garbage collection, which then walks only what came since
    (mostly trails). That halved the collector's share of ingest (~10% of it). Only `serve`,
    a process of its own, calls it: an agent run inside another program (tests) leaves that
    program's collector alone.

    The collector also runs less often than Python's default (700, 10, 10): ingest
    allocates a few objects per event, freed by reference counting (never cyclic), and
    each collection walks the young objects, survivors the trails. At 700 it ran every
    ~150 events and took a tenth of ingest; 200,000 (with 50 and 20 for the older
    generations) gave summary-mix ingest ~10% more than 50,000. What this keeps longer is
    cyclic garbage only: at most that many young objects (~20 MB), and a full collection
    still comes once the objects since the last one are a quarter of those it kept."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


async def serve(config: AgentConfig, shutdown_trigger: Awaitable[object]) -> None:
    async with running_agent(config, shutdown_timeout=config.shutdown_timeout_seconds):
        freeze_startup_heap()
        await shutdown_trigger
