"""A ComfyUI custom node for the disconnect tests: it stands for a sampler on a GPU, a long node that takes an interrupt
between its steps (as ComfyUI's samplers do through their progress hook), without the CPU work of a real one. It
passes its image through after `steps` steps of `step_s` seconds, each step waiting on the clock, not computing."""

import time

import comfy.model_management


class InterruptibleSteps:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "step_s": ("FLOAT", {"default": 0.1, "min": 0.001, "max": 10.0}),
            }
        }

    def run(self, image, steps, step_s):
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(step_s)
        return (image,)


NODE_CLASS_MAPPINGS = {"InterruptibleSteps": InterruptibleSteps}
