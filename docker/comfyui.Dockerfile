# syntax=docker/dockerfile:1
#
# The ComfyUI base image: PyTorch with CUDA (the official pytorch/pytorch image), ComfyUI checked out at a
# release tag in /opt/ComfyUI with its requirements, uv, and optionally comfy-cli. ComfyUI runs on the
# image's own Python. The API image (../Dockerfile) is built FROM this one; docker/build.sh builds both.
#
#   docker buildx build -f docker/comfyui.Dockerfile --build-arg COMFYUI_VERSION=0.3.75 -t <base tag> docker
#
# Run on its own, it starts ComfyUI on port 8188.

ARG TORCH_VERSION=2.8.0
ARG CUDA_VERSION=12.8
# runtime (smaller) or devel (nvcc and headers, for custom nodes that compile CUDA code).
ARG PYTORCH_FLAVOR=runtime

FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-${PYTORCH_FLAVOR}

ARG TORCH_VERSION
ARG CUDA_VERSION
ARG COMFYUI_VERSION=0.3.75
ARG COMFYUI_REPOSITORY=https://github.com/comfyanonymous/ComfyUI.git
ARG UV_VERSION=0.13.8
ARG INSTALL_COMFY_CLI=true
ARG COMFY_CLI_VERSION=1.23.0
ARG DEBIAN_FRONTEND=noninteractive

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Latest security fixes of the distribution's packages; not pinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git \
    && rm -rf /var/lib/apt/lists/*

RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}" \
    && git clone --depth 1 --branch "v${COMFYUI_VERSION}" "${COMFYUI_REPOSITORY}" /opt/ComfyUI

WORKDIR /opt/ComfyUI

# ComfyUI's requirements without replacing the image's torch. The torch packages the image ships are
# recorded in /opt/torch-installed.txt and pinned, without their local build tag (2.8.0, not 2.8.0+cu128, so
# that isolated build environments can satisfy the pin from PyPI too), in /opt/torch-constraints.txt, which
# this install and every later pip or uv install (custom nodes, manifests) honour (PIP_CONSTRAINT,
# UV_CONSTRAINT below). torchaudio, if the image lacks it, comes from PyTorch's index for this CUDA version,
# with --no-deps so that it cannot bring in another torch. The last line fails the build if torch changed.
RUN torch_packages() { pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio)==' | sort; } \
    && installed=$(torch_packages) \
    && if ! grep -qi '^torchaudio==' <<<"${installed}"; then \
        uv pip install --system --no-cache --no-deps \
            --index-url "https://download.pytorch.org/whl/cu${CUDA_VERSION//./}" "torchaudio==${TORCH_VERSION}"; \
    fi \
    && torch_packages > /opt/torch-installed.txt \
    && sed 's/+.*$//' /opt/torch-installed.txt > /opt/torch-constraints.txt \
    && cat /opt/torch-installed.txt \
    && uv pip install --system --no-cache --requirement requirements.txt --constraint /opt/torch-constraints.txt \
    && torch_packages | diff - /opt/torch-installed.txt

# comfy-cli installs custom nodes by their registry name (manifest `custom_nodes`); it lives in ComfyUI's
# Python so that the nodes' requirements land there too.
RUN if [ "${INSTALL_COMFY_CLI}" = "true" ]; then \
        uv pip install --system --no-cache --constraint /opt/torch-constraints.txt "comfy-cli==${COMFY_CLI_VERSION}" \
        && comfy --skip-prompt tracking disable \
        && comfy --skip-prompt set-default /opt/ComfyUI; \
    fi

ENV COMFY_HOME=/opt/ComfyUI \
    PIP_CONSTRAINT=/opt/torch-constraints.txt \
    UV_CONSTRAINT=/opt/torch-constraints.txt \
    PYTHONUNBUFFERED=1

LABEL org.opencontainers.image.title="ComfyUI ${COMFYUI_VERSION} (torch ${TORCH_VERSION}, CUDA ${CUDA_VERSION})" \
      org.opencontainers.image.version="${COMFYUI_VERSION}"

EXPOSE 8188
CMD ["python", "/opt/ComfyUI/main.py", "--listen", "0.0.0.0", "--port", "8188"]
