#!/usr/bin/env bash
# Set up everything a fresh machine needs, into ignored folders of this checkout:
#   .venv      this server and its development tools
#   .comfyui   a real CPU ComfyUI (scripts/install-comfyui.sh)
#   tests/services/node_modules   Azurite, the Azure Blob emulator the tests use
# Re-running when nothing changed takes a second or two.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$repo"
log() { printf '[setup] %s\n' "$*" >&2; }

python=${PYTHON:-python3.11}
stamp=.venv/.setup-stamp
stamp_value=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$stamp_value" && -x .venv/bin/comfyui-api ]]; then
  log "server venv up to date"
else
  rm -f -- "$stamp"
  [[ -x .venv/bin/python ]] || { log "creating .venv"; "$python" -m venv .venv; }
  log "installing comfyui-api and its development tools into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 |
    { grep -v -F 'is ignored: it is neither a file nor a directory' || true; } >&2
  echo "$stamp_value" >"$stamp"
fi

scripts/install-comfyui.sh "$repo/.comfyui"
scripts/install-test-services.sh
