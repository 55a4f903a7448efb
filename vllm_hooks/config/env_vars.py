"""The table of environment variables the hook reads: each name with what it means, and the
defaults and limits that go with it.

Every variable is a documented constant here; nothing else in the hook reads the environment
(`settings` reads the whole table through `env_parsing`, `start_policy` the few that
`register()` needs first). Constants only, no imports: a disabled hook loads this module too.
"""

#: "true" installs the hook (the project's own switch).
ENV_ENABLED = "VLLM_AUDIT_ENABLED"
#: Alternative switch with the same meaning, kept for the structured-output audit's users.
ENV_STRUCTURED_OUTPUT_AUDIT = "VLLM_STRUCTURED_OUTPUT_AUDIT"
#: Agent ingest address: a Unix socket path, or "unix:/path", or "host:port" (TCP).
ENV_AGENT_ADDRESS = "VLLM_AUDIT_AGENT_ADDRESS"
#: Level until the agent pushes one: off | summary | key-events | full | full-with-allowed-sets.
ENV_LEVEL = "VLLM_AUDIT_LEVEL"
#: Events held in memory before new ones are dropped (and counted).
ENV_BUFFER_EVENTS = "VLLM_AUDIT_BUFFER_EVENTS"
#: Bytes of sent-but-unacknowledged batches kept for resend after a reconnect.
ENV_UNACKED_BYTES = "VLLM_AUDIT_UNACKED_BYTES"
#: Events per batch and the sender's flush interval in milliseconds.
ENV_BATCH_EVENTS = "VLLM_AUDIT_BATCH_EVENTS"
ENV_FLUSH_MS = "VLLM_AUDIT_FLUSH_MS"
#: Serialised bytes per batch (at least MIN_BATCH_BYTES). Batches are cut by bytes as well as
#: by count; a single event larger than this is truncated to fit and marked `truncated`.
ENV_MAX_BATCH_BYTES = "VLLM_AUDIT_MAX_BATCH_BYTES"
#: The gRPC channel's message size limit; must exceed the batch cap. Give the agent the same
#: (or a larger) limit, or it ends the stream on every batch between its limit and this one.
ENV_MAX_MESSAGE_BYTES = "VLLM_AUDIT_MAX_MESSAGE_BYTES"
#: Milliseconds the oldest sent batch may wait for an answer before the sender cancels the
#: stream, reconnects and resends.
ENV_ACK_TIMEOUT_MS = "VLLM_AUDIT_ACK_TIMEOUT_MS"
#: Capture policies: none | hmac | redact | full.
ENV_CAPTURE_PROMPT = "VLLM_AUDIT_CAPTURE_PROMPT"
ENV_CAPTURE_OUTPUT = "VLLM_AUDIT_CAPTURE_OUTPUT"
ENV_CAPTURE_CLIENT_IP = "VLLM_AUDIT_CAPTURE_CLIENT_IP"
#: "false" turns off the content signals: counts of SQL / command / prompt injection, secrets
#: and personal data (e-mail, phone, Luhn-valid card, mod-97-valid IBAN) in each served
#: request's prompt and output, taken before the capture policy (on by default; records
#: carry content_signals null when off).
ENV_SIGNALS = "VLLM_AUDIT_SIGNALS"
#: Characters of each side (prompt, output) the signals scan; over it, the first and the last
#: half of this many are scanned and the rest counted in content_signals_unscanned_chars.
ENV_SIGNALS_MAX_CHARS = "VLLM_AUDIT_SIGNALS_MAX_CHARS"
DEFAULT_SIGNALS_MAX_CHARS = 64 * 1024
#: Secret for the hmac policy. Without it a random per-process key is used (not joinable).
ENV_HMAC_KEY = "VLLM_AUDIT_HMAC_KEY"
#: Header a trusted proxy sets to name the tenant of a request (default x-tenant-id). Believed
#: only from a peer in VLLM_AUDIT_TRUSTED_PROXIES (identity.py); from any other, ignored.
ENV_TENANT_HEADER = "VLLM_AUDIT_TENANT_HEADER"
#: Header a trusted proxy sets to name the authenticated user (no default: off), e.g.
#: x-forwarded-user (oauth2-proxy). Same trust rule as the tenant header.
ENV_USER_HEADER = "VLLM_AUDIT_USER_HEADER"
#: Comma-separated CIDRs of proxies whose X-Forwarded-For and identity headers are believed
#: (client_address.py, identity.py).
ENV_TRUSTED_PROXIES = "VLLM_AUDIT_TRUSTED_PROXIES"
#: YAML/JSON file mapping API keys' SHA-256 (never the keys) to a user and/or tenant
#: (identity_file.py): the most trusted identity source.
ENV_IDENTITY_FILE = "VLLM_AUDIT_IDENTITY_FILE"

# -- The first seed design's variables, each with its seed meaning mapped onto this design. --
#: true: record the allowed-token set of every step (implies level full-with-allowed-sets).
ENV_RECORD_ALLOWED_TOKENS = "VLLM_AUDIT_RECORD_ALLOWED_TOKENS"
#: true: record every grammar step, not only the summary (implies level full).
ENV_RECORD_FULL_EVENTS = "VLLM_AUDIT_RECORD_FULL_EVENTS"
#: The grammar's spec text in GrammarCompiled (cut at VLLM_AUDIT_GRAMMAR_MAX_BYTES), so a trail
#: is self-contained and `vllm-audit replay` can re-run it: unset, at levels full and up;
#: true, at every level; false, never.
ENV_INCLUDE_GRAMMAR = "VLLM_AUDIT_INCLUDE_GRAMMAR"
ENV_GRAMMAR_MAX_BYTES = "VLLM_AUDIT_GRAMMAR_MAX_BYTES"
#: Level full-with-allowed-sets: the largest encoded allowed-token set kept for one step, and
#: for all steps of one request. A set over either cap is dropped for its step (the step says
#: allowed_set_truncated; the request's summary counts it by cap). The step cap is also held
#: to a quarter of VLLM_AUDIT_MAX_BATCH_BYTES so a set never forces a batch cut. The default
#: step cap keeps a JSON schema's largest row at a 128k vocabulary (inside a string: ~9 KB as
#: disallowed ids, measured) and refuses the raw 16 KiB row of a dense scatter.
ENV_ALLOWED_SET_MAX_BYTES = "VLLM_AUDIT_ALLOWED_SET_MAX_BYTES"
ENV_ALLOWED_SETS_TRAIL_MAX_BYTES = "VLLM_AUDIT_ALLOWED_SETS_TRAIL_MAX_BYTES"
#: Rows copied on the engine thread wait in the buffer for the sender thread to encode them.
#: While the buffer holds more than this many bytes of them (reckoned as if every buffered
#: event held one), new steps are captured without their set (counted): a lagging sender
#: sheds sets first, never steps, and the buffer's memory stays bounded.
ENV_ALLOWED_SETS_BACKLOG_BYTES = "VLLM_AUDIT_ALLOWED_SETS_BACKLOG_BYTES"
DEFAULT_ALLOWED_SET_MAX_BYTES = 12 * 1024
DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES = 1 << 20
DEFAULT_ALLOWED_SETS_BACKLOG_BYTES = 64 << 20
#: The seed's synchronous mode (false) is not offered: the engine thread only appends to a
#: bounded buffer and a background thread sends, so vLLM never waits on the audit. false is
#: accepted and answered with a startup warning saying so.
ENV_ASYNC = "VLLM_AUDIT_ASYNC"
#: Persistence is the agent's: its ingest WAL and record log under `--data-dir`. In the hook
#: these only produce a startup message pointing there (VLLM_AUDIT_LOG_DIR is the agent's
#: data directory; VLLM_AUDIT_PERSIST=false cannot turn off what acknowledgements rely on).
ENV_PERSIST = "VLLM_AUDIT_PERSIST"
ENV_LOG_DIR = "VLLM_AUDIT_LOG_DIR"
#: true: chat and completion responses carry usage.structured_output_audit.
ENV_IN_RESPONSE = "VLLM_AUDIT_IN_RESPONSE"
#: What the response carries: summary (the trail's audit summary) | full (also its events).
ENV_RESPONSE_LEVEL = "VLLM_AUDIT_RESPONSE_LEVEL"
#: Where the API server reads a request's audit for the response. Unset (the default), it
#: reads back over the ingest socket it already streams to (IngestService.ReadAudit: only
#: the structured-output audit of requests this vLLM sent), needing nothing else. Set, with
#: VLLM_AUDIT_QUERY_TOKEN, it asks the agent's query API at this HOST:PORT instead (an
#: agent reached over TCP, or one that keeps its ingest socket from readers).
ENV_QUERY_ADDRESS = "VLLM_AUDIT_QUERY_ADDRESS"
#: Bearer token for that query API (role auditor or admin); kept out of logs. Set alone, the
#: address is 127.0.0.1:50051 (the agent's default --query-address).
ENV_QUERY_TOKEN = "VLLM_AUDIT_QUERY_TOKEN"
DEFAULT_QUERY_ADDRESS = "127.0.0.1:50051"
#: Not a setting: the random key the first hook process of a vLLM launch makes and the
#: processes it starts inherit (instance_key.py), so the API server may read back the audit
#: its EngineCore wrote. Any value works; set it only to share one key on purpose.
ENV_INSTANCE_KEY = "VLLM_AUDIT_INSTANCE_KEY"
#: Longest a response waits for its audit (the engine's events reach the agent in ~flush ms).
ENV_RESPONSE_TIMEOUT_MS = "VLLM_AUDIT_RESPONSE_TIMEOUT_MS"
#: true: the hook clocks its own calls on vLLM's threads and its sender threads' CPU time and
#: reports them on every batch (Batch.self_timing; the agent exports vllm_audit_hook_self_*).
#: Chosen once, when the hook wraps vLLM: off, the untimed wrappers run and nothing is clocked.
ENV_SELF_TIMING = "VLLM_AUDIT_SELF_TIMING"
#: File caching the SHA-256 of each model, tokenizer and LoRA adapter file by path, size and
#: mtime, so a restart does not read the weights again (default
#: ~/.cache/vllm-audit/digests.json; "none": no cache, every start reads every file).
ENV_DIGEST_CACHE = "VLLM_AUDIT_DIGEST_CACHE"
#: Trails kept in memory: the agent's trail store cap. Validated here, applied by the agent.
ENV_MAX_TRAILS = "VLLM_AUDIT_MAX_TRAILS"

RESPONSE_LEVELS = ("summary", "full")
#: Named starting points (PRESETS); every variable set explicitly overrides its preset value.
ENV_PRESET = "VLLM_AUDIT_PRESET"

# -- start-up policy (read by register() on its own: it must work when the rest is invalid) --
#: "true": an invalid setting only logs and vLLM serves unaudited. Default: vLLM refuses to
#: start, naming the variable (an audit that is silently off fails its purpose).
ENV_FAIL_OPEN = "VLLM_AUDIT_FAIL_OPEN"
#: "true": vLLM refuses to start when the agent cannot be reached at start-up.
ENV_REQUIRED = "VLLM_AUDIT_REQUIRED"
#: Seconds register() keeps trying the agent under VLLM_AUDIT_REQUIRED (a sidecar may start
#: a moment after vLLM).
ENV_REQUIRED_WAIT = "VLLM_AUDIT_REQUIRED_WAIT_SECONDS"

DEFAULT_AGENT_ADDRESS = "/var/run/vllm-audit/ingest.sock"
DEFAULT_MAX_BATCH_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
DEFAULT_ACK_TIMEOUT_MS = 10_000
#: Room for a batch's header, its gap marker and one truncated event.
MIN_BATCH_BYTES = 4096
#: gRPC takes message limits as a C int.
MAX_MESSAGE_BYTES_LIMIT = (1 << 31) - 1
CAPTURE_POLICIES = ("none", "hmac", "redact", "full")
