"""Random seeds: -1 in any `seed` or `noise_seed` input of a graph, and the example workflows' seed field."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from comfyui_api.pipeline.jobs import Job
from comfyui_api.pipeline.preprocess import MAX_RANDOM_SEED, Preprocessor, random_seed, replace_random_seeds
from comfyui_api.workflows.fields import MAX_SEED, Seed, seed_field
from tests.support.graphs import node, txt2img


class Draws(random.Random):
    """Hands out 1000, 1001, … and records the range each draw was asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.ranges.append((a, b))
        return 1000 + len(self.ranges) - 1


def test_every_seed_and_noise_seed_of_minus_one_is_drawn_in_any_node() -> None:
    prompt: dict[str, dict[str, Any]] = {
        "1": node("KSampler", seed=-1, steps=1),
        "2": node("KSamplerAdvanced", noise_seed=-1),
        "3": node("RandomNoise", noise_seed=-1.0),
        "4": node("SomeCustomNode", seed=-1, noise_seed=-1),
    }
    draws = Draws()
    replace_random_seeds(prompt, draws)
    assert prompt == {
        "1": node("KSampler", seed=1000, steps=1),
        "2": node("KSamplerAdvanced", noise_seed=1001),
        "3": node("RandomNoise", noise_seed=1002),
        "4": node("SomeCustomNode", seed=1003, noise_seed=1004),
    }
    # Within ComfyUI's range, and below 2**53 so that JavaScript reads the echoed seed exactly.
    assert set(draws.ranges) == {(0, MAX_RANDOM_SEED)} and MAX_RANDOM_SEED == 2**53 - 1


@pytest.mark.parametrize("value", [0, 7, -2, MAX_SEED, "-1", ["5", 0], None, True, False])
def test_other_seed_values_are_left_as_they_are(value: Any) -> None:
    prompt = {"1": node("KSampler", seed=value, noise_seed=value)}
    draws = Draws()
    replace_random_seeds(prompt, draws)
    assert prompt == {"1": node("KSampler", seed=value, noise_seed=value)} and draws.ranges == []


def test_minus_one_in_other_inputs_is_left_as_it_is() -> None:
    prompt = {"1": node("KSampler", steps=-1, seed_offset=-1, batch_index=-1)}
    replace_random_seeds(prompt, Draws())
    assert prompt == {"1": node("KSampler", steps=-1, seed_offset=-1, batch_index=-1)}


def test_random_seeds_cover_the_range() -> None:
    rng = random.Random(12)
    seeds = [random_seed(rng) for _ in range(200)]
    assert all(0 <= seed <= MAX_RANDOM_SEED for seed in seeds)
    assert len(set(seeds)) == 200 and max(seeds) > 2**50


async def test_the_preprocessor_draws_seeds_before_the_prompt_is_queued(tmp_path: Path) -> None:
    draws = Draws()
    preprocessor = Preprocessor(
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        rng=draws,
    )
    prompt = txt2img(seed=-1)
    await preprocessor.run(prompt, Job(id="seeded"))
    assert prompt["5"]["inputs"]["seed"] == 1000


class Sampling(BaseModel):
    seed: Seed = seed_field()


def test_the_seed_field_defaults_to_a_new_random_seed_per_request() -> None:
    seeds = {Sampling().seed for _ in range(20)}
    assert len(seeds) == 20 and all(0 <= seed <= MAX_RANDOM_SEED for seed in seeds)


def test_the_seed_field_draws_a_seed_for_minus_one_and_keeps_the_others() -> None:
    assert 0 <= Sampling(seed=-1).seed <= MAX_RANDOM_SEED
    assert [Sampling(seed=seed).seed for seed in (0, 42, MAX_SEED)] == [0, 42, MAX_SEED]


@pytest.mark.parametrize("seed", [-2, MAX_SEED + 1, 1.5])
def test_the_seed_field_refuses_what_comfyui_would(seed: float) -> None:
    with pytest.raises(ValidationError):
        Sampling(seed=seed)
