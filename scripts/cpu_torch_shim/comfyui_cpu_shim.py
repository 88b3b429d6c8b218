"""Import hook that lets the CUDA-linked PyPI torchvision/torchaudio wheels import under CPU torch.

Installed into a venv's site-packages next to ``comfyui_cpu_shim.pth``, which imports this module at
interpreter start-up. Importing it only appends a ``sys.meta_path`` finder; the finder acts on two
module names and, even then, changes behaviour only when the native extensions failed to load
(the PyPI wheels link libtorch_cuda.so / libcudart, which the CPU torch wheel does not ship).
With real CPU builds of torchvision/torchaudio installed it is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_TV_META = "torchvision._meta_registrations"
_TA_UTILS = "torchaudio._extension.utils"
# Same schemas that torchvision's C++ extension defines for these ops.
_TV_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# A torch.library.Library removes its definitions when garbage-collected, so keep ours alive.
_libraries: list[Any] = []


def _define_torchvision_schemas() -> None:
    """torchvision._meta_registrations calls register_fake("torchvision::nms"/"qnms") without
    checking that the C extension loaded; the ops then do not exist and `import torchvision` raises
    RuntimeError. Defining the bare schemas (no kernels) lets it import; torchvision.ops C kernels
    stay unavailable, the pure-torch parts (transforms, ...) work."""
    import torch

    importlib.import_module("torchvision.extension")  # loads _C if it can; must run before our check
    missing = [name for name in _TV_SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if not missing:
        return  # the real extension registered them
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_TV_SCHEMAS[name])
    _libraries.append(lib)


def _patch_torchaudio_utils(module: ModuleType) -> None:
    """torchaudio._extension.utils._load_lib re-raises the OSError from dlopen when libtorchaudio's
    CUDA dependencies are missing, which breaks `import torchaudio`. Returning False is the path
    torchaudio itself takes when its native libraries are absent (pure-torch functions keep working)."""
    real_load_lib: Callable[[str], bool] = module._load_lib

    def _load_lib(lib: str) -> bool:
        try:
            return real_load_lib(lib)
        except OSError:
            return False

    module._load_lib = _load_lib


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader and runs `after(module)` once the module has executed."""

    def __init__(self, inner: importlib.abc.Loader, after: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._after = after

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ... (linecache, inspect)
        return getattr(self._inner, name)


class _CpuShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == _TV_META:
            _define_torchvision_schemas()
            return None  # the normal finders import the module itself
        if fullname != _TA_UTILS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, _patch_torchaudio_utils)
                return spec
        return None


if not any(isinstance(f, _CpuShimFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CpuShimFinder())
