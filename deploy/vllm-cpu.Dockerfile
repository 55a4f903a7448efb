# vLLM's CPU build plus the hook, for docker-compose's `cpu` profile (no GPU needed).
# Every package comes from the hashed lock (requirements/vllm.txt, `make lock`: Python 3.11,
# x86_64); torch's +cpu wheel from PyTorch's CPU index. The lock excludes PyPI's torchvision,
# torchaudio and torchcodec (CUDA builds that fail to load beside torch +cpu).
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/vllm-audit
COPY requirements/vllm.txt ./requirements/
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" --require-hashes -r requirements/vllm.txt
COPY . ./
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && cd / && rm -rf /tmp/vllm-audit
ENV VLLM_TARGET_DEVICE=cpu
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
