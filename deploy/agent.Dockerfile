# The sidecar agent image. Runs as 65532 (distroless "nonroot"), which owns its data and socket
# directories here, so a fresh named volume mounted on them starts with that owner too.
# Every package comes from the hashed lock (requirements/agent.txt, `make lock`); the project
# itself installs with --no-deps, so nothing is resolved at build time.
FROM python:3.11-slim
WORKDIR /src
COPY requirements/agent.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/agent.txt
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY vllm_hooks ./vllm_hooks
COPY proto ./proto
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/vllm-audit \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/vllm-audit-content-keys \
    && install -d -o 65532 -g 65532 -m 0755 /var/run/vllm-audit
USER 65532:65532
ENTRYPOINT []
CMD ["vllm-audit", "agent"]
