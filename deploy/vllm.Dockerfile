# vLLM's own image plus the hook (the "your own vLLM image" path: pyproject.toml's lower bounds,
# resolved against what vLLM's image already has; the CPU image, deploy/vllm-cpu.Dockerfile, is locked).
# The `hooks` extra adds grpcio and orjson (vLLM ships neither);
# numpy and protobuf come with vLLM (tests/test_packaging.py checks the hook's imports against both).
FROM vllm/vllm-openai:v0.32.0
COPY . /tmp/vllm-audit
RUN pip install --no-cache-dir "/tmp/vllm-audit[hooks]" && rm -rf /tmp/vllm-audit
