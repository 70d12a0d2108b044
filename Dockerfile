# AgentStream services (worker, projections, archiver) for docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app
# torch: exactly the CPU build (an unpinned torch pulls several GB of CUDA packages).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0+cpu" --index-url "${TORCH_INDEX}"

COPY pyproject.toml constraints.txt README.md ./
COPY schemas schemas
COPY streams streams
COPY projections projections
COPY agentstream agentstream
RUN pip install . -c constraints.txt

VOLUME ["/data"]
CMD ["agentstream", "--help"]
