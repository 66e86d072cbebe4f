# DigitSum on a GPU host: `docker compose up` (see docker-compose.yml).
# The CUDA runtime comes from the torch wheel's nvidia-* packages, so a slim Python base is enough;
# the host needs the NVIDIA driver and the NVIDIA container toolkit.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /srv/digitsum

# Dependencies first, so code changes rebuild only the last layers.
COPY pyproject.toml README.md ./
RUN mkdir -p app training \
    && touch app/__init__.py training/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y digitsum

COPY app ./app
COPY models/digitsum.pt models/digitsum.json ./models/

RUN useradd --system --uid 10001 --no-create-home digitsum
USER 10001

ENV DIGITSUM_MODEL_PATH=/srv/digitsum/models/digitsum.pt \
    DIGITSUM_DEVICE=auto \
    PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/readyz', timeout=2)"]

# exec form through sh for $PORT; uvicorn then gets SIGTERM directly and drains in-flight requests
CMD ["sh", "-c", "exec uvicorn app.main:app --host 0.0.0.0 --port \"$PORT\" --log-config app/log_config.json --no-access-log --timeout-graceful-shutdown 20"]
