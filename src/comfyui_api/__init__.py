"""comfyui-api: a stateless, horizontally scalable HTTP API in front of ComfyUI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("comfyui-api")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
