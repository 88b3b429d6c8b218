"""A ComfyUI custom node for the wedge tests: it kills ComfyUI's prompt worker thread once the prompt it is in has
finished. The worker's next wait for work raises, so later prompts stay pending while nothing runs, and ComfyUI's
HTTP server goes on answering: the wedge that a deeply nested input causes in a real ComfyUI."""

import server


class KillPromptWorker:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        def dead(*args, **kwargs):
            raise SystemExit("prompt worker killed by KillPromptWorker")

        server.PromptServer.instance.prompt_queue.get = dead
        return (image,)


NODE_CLASS_MAPPINGS = {"KillPromptWorker": KillPromptWorker}
