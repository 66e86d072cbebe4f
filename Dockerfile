# DigitSum on a GPU host: `docker compose up` (see docker-compose.yml and the README's Deployment section).
# The CUDA runtime comes from the torch wheel's nvidia-* packages, so a slim Python base is enough;
# the host needs the NVIDIA driver and the NVIDIA container toolkit.
#
# The base is pinned by digest: python:3.11-slim-bookworm as published on Docker Hub (the multi-arch index digest,
# as pinned in public Dockerfiles, e.g. github.com/peiyang-z6/BandStructure_AI_Project). To move it on:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # then paste the new digest here and run make container-test
ARG BASE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /srv/digitsum

# Dependencies first, so code changes rebuild only the last layers. requirements.lock (`make lock`) pins every
# package with its hashes: an image built next month installs the same files as the one tested today.
# Then what serving never uses goes (benchmarks/results/container.md has the sizes): triton (0.9 GB; it compiles
# torch.compile's kernels, and a TorchScript forward never calls it: torch checks for it before use), torch's C++
# headers and CMake files (for building extensions), and pip (the image installs nothing at run time). The bytecode
# pip compiled stays: the root filesystem is read-only.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock \
    && SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -rf "$SITE/torch/include" "$SITE/torch/share/cmake" \
    && python -m pip uninstall -y -q triton \
    && python -m pip uninstall -y -q pip

COPY app ./app
COPY models/digitsum.pt models/digitsum.json ./models/

RUN useradd --system --uid 10001 --no-create-home digitsum
USER 10001

# WORKERS: serving processes; auto = the container's CPU quota (cgroup), e.g. 2 under `--cpus=2`.
ENV DIGITSUM_MODEL_PATH=/srv/digitsum/models/digitsum.pt \
    DIGITSUM_DEVICE=auto \
    PORT=8000 \
    WORKERS=auto
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/readyz', timeout=2)"]

# The launcher of `make run` (app/serve.py). sh only expands the variables: exec hands PID 1 to app.serve, so
# `docker stop`'s SIGTERM reaches it and every worker drains its in-flight requests (DIGITSUM_DRAIN_TIMEOUT_S).
CMD ["sh", "-c", "exec python -m app.serve --host 0.0.0.0 --port \"$PORT\" --workers \"${WORKERS:-auto}\" --log-config app/log_config.json"]
