# jobformer: one image for the API, the worker and the one-shot migration.
#   docker build -t jobformer .                                        # CPU torch (small)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t jobformer:gpu .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JOBFORMER_DATA_DIR=/data

RUN useradd --create-home --uid 10001 jobformer \
    && mkdir -p /data/datasets /data/tmp /data/jobs && chown -R jobformer:jobformer /data

WORKDIR /app
# torch first, from the chosen index, so the package install below does not pull the multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY api ./api
COPY broker ./broker
COPY cli ./cli
COPY core ./core
COPY migrations ./migrations
COPY worker ./worker
RUN pip install .

USER jobformer
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
# Listening on every interface, `serve` refuses to start without JOBFORMER_API_KEYS (no key is built in).
CMD ["jobformer", "serve", "--host", "0.0.0.0", "--port", "8000"]
