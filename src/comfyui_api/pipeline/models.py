"""Model-loader nodes whose inputs may be URLs, and the model folder each input loads from."""

from __future__ import annotations

# class_type → {input name: folder under MODEL_DIR}. DiffusersLoader's folder is a git repository.
MODEL_LOADERS: dict[str, dict[str, str]] = {
    "CheckpointLoader": {"config_name": "configs", "ckpt_name": "checkpoints"},
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "DiffusersLoader": {"model_path": "diffusers"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "VAELoader": {"vae_name": "vae"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "TripleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3)},
    "QuadrupleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3, 4)},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    "UpscaleModelLoader": {"model_name": "upscale_models"},
}

GIT_LOADERS = frozenset({"DiffusersLoader"})

# Schemes a loader input may use for a download (anything else is a model name for ComfyUI).
MODEL_URL_SCHEMES = ("http://", "https://", "s3://")
