#!/usr/bin/env bash
# Build the ComfyUI base image (docker/comfyui.Dockerfile) and the API image (Dockerfile) on it, with
# docker buildx. Run from anywhere; the build contexts are this repository's docker/ and root folders.
#
#   docker/build.sh                                   # defaults below, loaded into the local image store
#   docker/build.sh --comfyui 0.3.75 --torch 2.8.0 --cuda 12.8 --registry ghcr.io/acme --push
#
# Without --push the images are loaded into the local Docker image store (--load), where the API build
# finds the base image: that needs buildx's default "docker" driver. With a docker-container builder, use
# --push so that the API build pulls the base image from the registry.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: docker/build.sh [options]
  --comfyui VERSION     ComfyUI release (git tag v<VERSION>)             default 0.3.75
  --torch VERSION       PyTorch version of the pytorch/pytorch base      default 2.8.0
  --cuda VERSION        CUDA version of the pytorch/pytorch base         default 12.8
  --flavor NAME         runtime or devel (pytorch/pytorch variant)       default runtime
  --registry PREFIX     prefix of both image names, e.g. ghcr.io/acme    default none (local names)
  --base-name NAME      base image name                                  default comfyui-api-base
  --name NAME           API image name                                   default comfyui-api
  --tag TAG             API image tag       default <api version>-comfy<v>-torch<v>-cuda<v>-<flavor>
  --latest              also tag the API image :latest
  --platform LIST       passed to buildx (e.g. linux/amd64)
  --no-cache            build without the layer cache
  --push                push both images instead of loading them locally
  --base-only           build the base image only
  --api-only            build the API image only (the base image must exist)
  --dry-run             print the docker commands instead of running them
  -h, --help            this help
USAGE
}

die() {
  echo "build.sh: $*" >&2
  exit 2
}

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

comfyui=0.3.75
torch=2.8.0
cuda=12.8
flavor=runtime
registry=""
base_name="comfyui-api-base"
name="comfyui-api"
tag=""
latest=false
platform=""
no_cache=false
push=false
build_base=true
build_api=true
dry_run=false

while (($#)); do
  case $1 in
    --comfyui | --torch | --cuda | --flavor | --registry | --base-name | --name | --tag | --platform)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --comfyui) comfyui=$2 ;;
        --torch) torch=$2 ;;
        --cuda) cuda=$2 ;;
        --flavor) flavor=$2 ;;
        --registry) registry=$2 ;;
        --base-name) base_name=$2 ;;
        --name) name=$2 ;;
        --tag) tag=$2 ;;
        --platform) platform=$2 ;;
        *) die "unhandled option: $1" ;;
      esac
      shift
      ;;
    --latest) latest=true ;;
    --no-cache) no_cache=true ;;
    --push) push=true ;;
    --base-only) build_api=false ;;
    --api-only) build_base=false ;;
    --dry-run) dry_run=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown option: $1"
      ;;
  esac
  shift
done

[[ $flavor == runtime || $flavor == devel ]] || die "--flavor must be runtime or devel, not $flavor"
for version in "$comfyui" "$torch" "$cuda"; do
  [[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "not a version number: $version"
done

api_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)
[[ -n $api_version ]] || die "no version in $repo/pyproject.toml"

prefix=${registry:+${registry%/}/}
base_image="${prefix}${base_name}:comfy${comfyui}-torch${torch}-cuda${cuda}-${flavor}"
api_image="${prefix}${name}:${tag:-${api_version}-comfy${comfyui}-torch${torch}-cuda${cuda}-${flavor}}"

common=()
if $push; then common+=(--push); else common+=(--load); fi
if $no_cache; then common+=(--no-cache); fi
if [[ -n $platform ]]; then common+=(--platform "$platform"); fi

run() {
  printf '%q ' "$@"
  printf '\n'
  if ! $dry_run; then "$@"; fi
}

if $build_base; then
  run docker buildx build "${common[@]}" \
    --file "$repo/docker/comfyui.Dockerfile" \
    --build-arg "TORCH_VERSION=$torch" \
    --build-arg "CUDA_VERSION=$cuda" \
    --build-arg "PYTORCH_FLAVOR=$flavor" \
    --build-arg "COMFYUI_VERSION=$comfyui" \
    --tag "$base_image" \
    "$repo/docker"
fi

if $build_api; then
  api_tags=(--tag "$api_image")
  if $latest; then api_tags+=(--tag "${prefix}${name}:latest"); fi
  run docker buildx build "${common[@]}" \
    --file "$repo/Dockerfile" \
    --build-arg "BASE_IMAGE=$base_image" \
    "${api_tags[@]}" \
    "$repo"
fi

echo "base image: $base_image" >&2
echo "API image:  $api_image" >&2
