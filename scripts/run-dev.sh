#!/usr/bin/env bash
# Run comfyui-api on port 3000 (Swagger UI at /docs). Needs Python 3.11; never node or npm (only the tests' services
# do, and scripts/setup.sh installs those).
#
#   scripts/run-dev.sh
#       installs a CPU ComfyUI into .comfyui (scripts/install-comfyui.sh) with a random-weight SD1.5-shaped checkpoint
#       (sd15-random.safetensors), and runs in front of it, with a warmup graph that uses that checkpoint
#   CMD='/path/to/python /path/to/ComfyUI/main.py --port 8188' COMFY_HOME=/path/to/ComfyUI scripts/run-dev.sh
#       your own ComfyUI, launched by CMD: nothing of ComfyUI is installed, no checkpoint written into it
#   COMFYUI_ATTACH=true COMFY_HOME=/path/to/ComfyUI scripts/run-dev.sh
#       a ComfyUI that already runs (at DIRECT_ADDRESS:COMFYUI_PORT_HOST): attached to, never launched or installed
#
# Any variable already set in the environment wins over the defaults below.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$repo"
log() { printf '[run-dev] %s\n' "$*" >&2; }

# This server's venv, as scripts/setup.sh makes it (same stamp), without the tests' services.
python=${PYTHON:-python3.11}
stamp=.venv/.setup-stamp
stamp_value=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(<"$stamp") != "$stamp_value" || ! -x .venv/bin/comfyui-api ]]; then
  rm -f -- "$stamp"
  [[ -x .venv/bin/python ]] || { log "creating .venv"; "$python" -m venv .venv; }
  log "installing comfyui-api and its development tools into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 |
    { grep -v -F 'is ignored: it is neither a file nor a directory' || true; } >&2
  echo "$stamp_value" >"$stamp"
fi

attach=$(printf '%s' "${COMFYUI_ATTACH:-}" | tr '[:upper:]' '[:lower:]')
if [[ $attach =~ ^(true|1|yes|on)$ ]]; then
  log "attaching to the ComfyUI at ${DIRECT_ADDRESS:-127.0.0.1}:${COMFYUI_PORT_HOST:-8188}; installing no ComfyUI"
elif [[ -n ${CMD:-} && -n ${COMFY_HOME:-} ]]; then
  log "launching your ComfyUI (CMD, COMFY_HOME=$COMFY_HOME); installing no ComfyUI"
else
  comfy="$repo/.comfyui"
  scripts/install-comfyui.sh "$comfy"
  checkpoint="$comfy/ComfyUI/models/checkpoints/sd15-random.safetensors"
  if [[ ! -f $checkpoint ]]; then
    log "generating $checkpoint"
    "$comfy/venv/bin/python" scripts/make_sd15_checkpoint.py --comfyui "$comfy/ComfyUI" --out "$checkpoint"
  fi
  : "${COMFY_HOME:=$comfy/ComfyUI}"
  : "${COMFYUI_PORT_HOST:=8188}"
  : "${CMD:=$comfy/venv/bin/python $COMFY_HOME/main.py --cpu --listen 127.0.0.1 --port $COMFYUI_PORT_HOST --disable-auto-launch --preview-method auto}"
  : "${WARMUP_PROMPT_FILE:=$repo/scripts/dev-warmup.json}"
  export COMFY_HOME COMFYUI_PORT_HOST CMD WARMUP_PROMPT_FILE
fi

: "${WORKFLOW_DIR:=$repo/workflows}"
: "${CACHE_DIR:=$repo/.cache/comfyui-api}"
: "${STARTUP_CHECK_MAX_TRIES:=120}"
export WORKFLOW_DIR CACHE_DIR STARTUP_CHECK_MAX_TRIES
log "comfyui-api on http://localhost:${PORT:-3000} (Swagger UI at /docs)"
exec .venv/bin/comfyui-api
