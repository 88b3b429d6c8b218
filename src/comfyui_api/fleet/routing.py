"""Model-aware routing: which models a job's graph names, as one key a worker that has them loaded can ask for.

A job's key is a digest of the sorted, distinct values of its model loaders' model inputs (pipeline/models.py's
MODEL_LOADERS: checkpoints, LoRAs, VAEs, ...; a model given by URL counts as its URL). Two jobs that load the same
models have the same key, whatever else differs; a job that loads none has no key and goes straight to the priority
queues. See broker.py for the queues a key names and worker.py for how a worker follows the keys it is warm for.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..pipeline.models import MODEL_LOADERS

# Hex digits of the key: the model queue's name carries it, and 64 bits make a collision between two model sets of
# one fleet as unlikely as it needs to be (a collision only routes a job to a worker warm for other models).
_KEY_HEX = 16


def model_key(graph: dict[str, Any]) -> str | None:
    """The key of the models `graph` loads, or None when it loads none."""
    models = set()
    for node in graph.values():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs")
        loads = MODEL_LOADERS.get(str(node.get("class_type")))
        if loads is None or not isinstance(inputs, dict):
            continue
        models.update(value for name, value in inputs.items() if name in loads and isinstance(value, str) and value)
    if not models:
        return None
    return hashlib.sha256("\n".join(sorted(models)).encode()).hexdigest()[:_KEY_HEX]
