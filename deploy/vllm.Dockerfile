# vLLM's own image plus the hook (it brings only grpcio, protobuf and numpy, which vLLM has).
FROM vllm/vllm-openai:v0.32.0
COPY . /tmp/vllm-audit
RUN pip install --no-cache-dir "/tmp/vllm-audit[hooks]" && rm -rf /tmp/vllm-audit
