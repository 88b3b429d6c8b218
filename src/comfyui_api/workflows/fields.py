"""Field types the example workflows share. Each example declares its whole RequestSchema with the field names,
types, defaults and bounds of the reference server's example of the same route, so that a client written for the
reference works unchanged; these types carry the rules that need more than a bound."""

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ..pipeline.preprocess import RANDOM_SEED, random_seed

# The seeds ComfyUI's samplers take.
MAX_SEED = 2**64 - 1
# ComfyUI's KSampler spreads its schedule over steps / denoise steps: a tiny positive denoise (1e-300) asks for more
# than memory holds, or overflows, and the prompt fails or stalls ComfyUI. 0 returns the latent as it is, and 0.01
# is the step of ComfyUI's own widget.
MIN_DENOISE = 0.01


def _random_if_asked(seed: int) -> int:
    # Drawn here rather than in the graph, so that the response's `input` shows the seed that ran too.
    return random_seed() if seed == RANDOM_SEED else seed


def _sampler_can_divide(denoise: float) -> float:
    if 0 < denoise < MIN_DENOISE:
        raise ValueError(f"must be 0 or at least {MIN_DENOISE}")
    return denoise


Seed = Annotated[int, Field(ge=RANDOM_SEED, le=MAX_SEED), AfterValidator(_random_if_asked)]
Denoise = Annotated[float, Field(ge=0, le=1), AfterValidator(_sampler_can_divide)]


def seed_field() -> Any:
    """The default of a `Seed`: a new random seed per request, so that identical requests give new images."""
    return Field(
        default_factory=random_seed,
        description="Noise seed; omitted or -1: a random one (the response's input shows it)",
    )
