# The fleet service (`vllm-audit fleet`): the agent's code with chDB (ClickHouse in-process)
# and clickhouse-connect, from their own lock (requirements/fleet.txt): chDB is kept out of
# the sidecar image, which every vLLM pod pulls.
FROM python:3.11-slim
WORKDIR /src
COPY requirements/fleet.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/fleet.txt
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY vllm_hooks ./vllm_hooks
COPY proto ./proto
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/vllm-audit-fleet
USER 65532:65532
ENTRYPOINT []
CMD ["vllm-audit", "fleet"]
