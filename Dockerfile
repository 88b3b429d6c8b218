# syntax=docker/dockerfile:1
#
# comfyui-api in front of ComfyUI, on a GPU. Built FROM the ComfyUI base image of docker/comfyui.Dockerfile;
# docker/build.sh builds both (docker/build.sh --help).
#
#   docker buildx build --build-arg BASE_IMAGE=<base tag> -t comfyui-api .
#   docker run --gpus all -p 3000:3000 comfyui-api
#
# The server runs in its own Python 3.11 virtual environment (/opt/comfyui-api), so its dependencies never
# meet ComfyUI's (huggingface_hub 2.x here, transformers' huggingface_hub<1.0 there). ComfyUI keeps the base
# image's Python: `python` on PATH is still that one, for CMD and for startup installs.

ARG BASE_IMAGE=comfyui-api-base:comfy0.3.75-torch2.8.0-cuda12.8-runtime
FROM ${BASE_IMAGE}

ARG PYTHON_VERSION=3.11
# Optional extras of this project, comma-separated (e.g. azure-identity).
ARG API_EXTRAS=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# .dockerignore narrows the build context to pyproject.toml, README.md, src/ and workflows/. It is mounted
# for this step only (writable, the writes are discarded), so no layer keeps the sources. The interpreter is
# a uv-managed CPython in /opt/uv-python, whatever Python the base image has. `comfyui-api` is linked into
# /usr/local/bin; the virtual environment itself stays off PATH.
RUN --mount=type=bind,target=/tmp/src,rw \
    command -v uv >/dev/null || { echo "uv is missing from the base image (docker/comfyui.Dockerfile installs it)" >&2; exit 1; }; \
    UV_PYTHON_INSTALL_DIR=/opt/uv-python uv venv --python "${PYTHON_VERSION}" --python-preference only-managed /opt/comfyui-api \
    && uv pip install --python /opt/comfyui-api/bin/python --no-cache \
        "comfyui-api${API_EXTRAS:+[${API_EXTRAS}]} @ file:///tmp/src" \
    && ln -s /opt/comfyui-api/bin/comfyui-api /usr/local/bin/comfyui-api \
    && /opt/comfyui-api/bin/python -c "import comfyui_api.app, comfyui_api.server"

# The example workflow endpoints (POST /workflow/<path>). Mount a folder of your own over /workflows, or
# build FROM this image and COPY yours there.
COPY workflows/ /workflows/

# CMD launches ComfyUI on loopback only (DIRECT_ADDRESS and COMFYUI_PORT_HOST keep their defaults,
# 127.0.0.1:8188): clients reach it through this server, never directly.
# MALLOC_MMAP_THRESHOLD_: glibc serves allocations of 1 MiB and more with mmap and gives them back at once,
# so the server's resident memory returns to its idle size after large outputs.
ENV COMFY_HOME=/opt/ComfyUI \
    WORKFLOW_DIR=/workflows \
    STARTUP_CHECK_MAX_TRIES=30 \
    CMD="python /opt/ComfyUI/main.py --listen 127.0.0.1 --port 8188 --disable-auto-launch --preview-method auto" \
    MALLOC_MMAP_THRESHOLD_=1048576

WORKDIR /opt/ComfyUI
EXPOSE 3000

# For `docker run` and Compose; Kubernetes uses the probes of deploy/kubernetes/deployment.yaml instead.
# The start period covers ComfyUI's start, startup downloads and the warmup prompt.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://localhost:${PORT:-3000}/health\" >/dev/null || exit 1"]

# SIGTERM drains: /ready turns 503, requests in flight finish within SHUTDOWN_GRACE_PERIOD_S, ComfyUI stops.
# Give the container more than that to stop (docker stop -t, Compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Takes no arguments: every setting is an environment variable. (ENTRYPOINT clears the base image's CMD.)
ENTRYPOINT ["comfyui-api"]
