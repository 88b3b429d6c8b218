#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run comfyui-api on port 3000 in front of the CPU ComfyUI in .comfyui,
# with a random-weight SD1.5-shaped checkpoint (sd15-random.safetensors) so real graphs run.
# Any variable already set in the environment wins over the defaults below.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$repo"
scripts/setup.sh

comfy="$repo/.comfyui"
checkpoint="$comfy/ComfyUI/models/checkpoints/sd15-random.safetensors"
if [[ ! -f $checkpoint ]]; then
  echo "[run-dev] generating $checkpoint" >&2
  "$comfy/venv/bin/python" scripts/make_sd15_checkpoint.py --comfyui "$comfy/ComfyUI" --out "$checkpoint"
fi

: "${COMFY_HOME:=$comfy/ComfyUI}"
: "${COMFYUI_PORT_HOST:=8188}"
: "${CMD:=$comfy/venv/bin/python $COMFY_HOME/main.py --cpu --listen 127.0.0.1 --port $COMFYUI_PORT_HOST --disable-auto-launch --preview-method auto}"
: "${WORKFLOW_DIR:=$repo/workflows}"
: "${CACHE_DIR:=$repo/.cache/comfyui-api}"
: "${WARMUP_PROMPT_FILE:=$repo/scripts/dev-warmup.json}"
: "${STARTUP_CHECK_MAX_TRIES:=120}"
export COMFY_HOME COMFYUI_PORT_HOST CMD WORKFLOW_DIR CACHE_DIR WARMUP_PROMPT_FILE STARTUP_CHECK_MAX_TRIES
echo "[run-dev] comfyui-api on http://localhost:${PORT:-3000} (Swagger UI at /docs)" >&2
exec .venv/bin/comfyui-api
