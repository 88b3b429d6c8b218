"""Write a random-weight, SD1.5-shaped checkpoint that ComfyUI loads as SD15 (no weight downloads).

Run with the ComfyUI venv's python (see scripts/install-comfyui.sh):

    .comfyui/venv/bin/python scripts/make_sd15_checkpoint.py --comfyui .comfyui/ComfyUI --out x.safetensors

The modules are ComfyUI's own classes, so the key layout is exactly what its loader expects. The UNet has
a single resolution level (25.8 M params) instead of four; the CLIP-L text encoder is full size because
ComfyUI's SD1 text-encoder config is fixed. Images are coloured noise, but every node runs for real.
Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

UNET_CONFIG = {
    "image_size": 32,  # unused by the model
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "context_dim": 768,
    "channel_mult": [1],
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "legacy": False,
}
# ComfyUI's default SD1.x VAE shape (comfy/sd.py, VAE.__init__).
KL_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
# Keys that real SD1.5 checkpoints lack; ComfyUI's loader filters them from its "clip missing" report.
CLIP_DROP = ("logit_scale", "transformer.text_projection.weight")


def shapes(comfyui: Path, vae: str) -> dict[str, torch.Size]:
    """Key -> shape of the full checkpoint, from ComfyUI's modules built on the meta device (no memory)."""
    sys.path.insert(0, str(comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: CPU torch has no CUDA
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        parts: dict[str, torch.nn.Module] = {
            "model.diffusion_model.": UNetModel(**UNET_CONFIG),
            "cond_stage_model.": comfy.sd1_clip.SDClipModel(device="meta"),
            "first_stage_model.": (
                comfy.taesd.taesd.TAESD() if vae == "taesd" else AutoencoderKL(ddconfig=KL_DDCONFIG, embed_dim=4)
            ),
        }
    out: dict[str, torch.Size] = {}
    for prefix, module in parts.items():
        for key, tensor in module.state_dict().items():
            if prefix == "cond_stage_model." and key in CLIP_DROP:
                continue
            out[prefix + key] = tensor.shape
    return out


def fill(key: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """randn/sqrt(fan_in) for matrices and kernels; biases 0; 1-D weights (norms) and scalars 1."""
    if key.endswith(("bias", "vae_shift")):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) <= 1:
        return torch.ones(shape, dtype=torch.float16)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=gen) / math.sqrt(fan_in)).to(torch.float16)


def main() -> int:
    ap = argparse.ArgumentParser(description="Write a random-weight SD1.5-shaped checkpoint for ComfyUI.")
    ap.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source tree (contains comfy/)")
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae", choices=["taesd", "kl"], default="taesd")
    ns = ap.parse_args()
    started = time.monotonic()

    key_shapes = shapes(ns.comfyui.resolve(), ns.vae)
    gen = torch.Generator().manual_seed(ns.seed)
    sd = {key: fill(key, key_shapes[key], gen) for key in sorted(key_shapes)}  # sorted: order fixes the values

    import comfy.model_detection
    import comfy.supported_models

    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    if type(config) is not comfy.supported_models.SD15:
        print(f"error: ComfyUI detects {type(config).__name__}, not SD15", file=sys.stderr)
        return 1

    from safetensors.torch import save_file

    ns.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{ns.out.name}.", suffix=".tmp", dir=ns.out.parent)
    os.close(fd)
    try:
        save_file(sd, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, ns.out)  # atomic: readers never see a partial file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    n_params = sum(t.numel() for t in sd.values())
    print(
        f"wrote {ns.out} ({ns.out.stat().st_size / 1e6:.0f} MB, {len(sd)} tensors, {n_params / 1e6:.1f} M params,"
        f" vae={ns.vae}, seed={ns.seed}) in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
