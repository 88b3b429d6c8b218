"""Everything that talks to ComfyUI: the supervised process, its HTTP API and its websocket."""
