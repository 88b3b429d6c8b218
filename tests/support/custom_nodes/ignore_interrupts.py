"""A ComfyUI custom node for the deadline tests: it sleeps in C code (time.sleep) for as long as it is told, so
ComfyUI's interrupt, which is only checked between nodes and at sampler steps, never reaches it."""

import time


class IgnoreInterrupts:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 600.0, "min": 0.0})}}

    def run(self, image, seconds):
        time.sleep(seconds)
        return (image,)


NODE_CLASS_MAPPINGS = {"IgnoreInterrupts": IgnoreInterrupts}
