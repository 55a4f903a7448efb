# The sidecar agent image.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY vllm_hooks ./vllm_hooks
COPY proto ./proto
RUN pip install --no-cache-dir ".[agent]"
USER 65532:65532
ENTRYPOINT []
CMD ["vllm-audit", "agent"]
