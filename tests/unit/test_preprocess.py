"""Preprocessor: output prefixes and media inputs rewritten before a prompt is queued."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.errors import BadRequest
from comfyui_api.pipeline.jobs import Job
from comfyui_api.pipeline.preprocess import (
    NO_SAVING_NODE,
    Preprocessor,
    is_saving_node,
    require_saving_node,
    rewrite_prefix,
    saves_output,
)
from tests.support.graphs import node
from tests.unit.samples import image_bytes

WAV = b"RIFF\x24\x08\x00\x00WAVEfmt " + b"\x00" * 40
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00" * 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def preprocessor(input_dir: Path, output_dir: Path, tmp_path: Path) -> Preprocessor:
    return make_preprocessor(input_dir, output_dir, tmp_path, prepend=True)


def make_preprocessor(input_dir: Path, output_dir: Path, tmp_path: Path, *, prepend: bool) -> Preprocessor:
    return Preprocessor(
        input_dir=input_dir, output_dir=output_dir, model_dir=tmp_path / "models", prepend_filenames=prepend
    )


@pytest.fixture
def job() -> Job:
    return Job(id="job1")


async def _bad_request(preprocessor: Preprocessor, prompt: dict[str, Any], job: Job) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        await preprocessor.run(prompt, job)
    return caught.value


def test_rewrite_prefix_prepends_the_job_id_or_replaces_the_prefix() -> None:
    assert rewrite_prefix("ComfyUI", "job1", prepend=True) == "job1_ComfyUI"
    assert rewrite_prefix("ComfyUI", "job1", prepend=False) == "job1"


async def test_filename_prefixes_get_the_job_id_prepended(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0])}

    await preprocessor.run(prompt, job)

    assert prompt["9"]["inputs"]["filename_prefix"] == "job1_ComfyUI"


async def test_filename_prefixes_are_replaced_when_prepend_is_off(
    input_dir: Path, output_dir: Path, tmp_path: Path, job: Job
) -> None:
    prompt = {"9": node("SaveImage", filename_prefix="ComfyUI"), "10": node("SaveAudio", filename_prefix="a/b")}

    await make_preprocessor(input_dir, output_dir, tmp_path, prepend=False).run(prompt, job)

    assert prompt["9"]["inputs"]["filename_prefix"] == "job1"
    assert prompt["10"]["inputs"]["filename_prefix"] == "job1"


async def test_an_empty_filename_prefix_is_left_alone(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"9": node("SaveImage", filename_prefix="")}

    await preprocessor.run(prompt, job)

    assert prompt["9"]["inputs"]["filename_prefix"] == ""


async def test_a_saving_node_matches_no_other_rule(preprocessor: Preprocessor, job: Job) -> None:
    inline = _b64(image_bytes("PNG"))
    prompt = {"9": node("CustomSaver", filename_prefix="out", image=inline)}

    await preprocessor.run(prompt, job)

    assert prompt["9"]["inputs"] == {"filename_prefix": "job1_out", "image": inline}
    assert job.input_files == []


def test_saving_node_detection() -> None:
    assert is_saving_node({"filename_prefix": "x"})
    assert not is_saving_node({"filename_prefix": ""})
    assert not is_saving_node({"filename_prefix": ["1", 0]})
    assert not is_saving_node({"images": ["1", 0]})


def test_save_output_false_does_not_count_as_an_output() -> None:
    assert saves_output({"filename_prefix": "x"})
    assert saves_output({"filename_prefix": "x", "save_output": True})
    assert not saves_output({"filename_prefix": "x", "save_output": False})


def test_require_saving_node_accepts_a_prompt_with_an_output() -> None:
    prompt = {
        "1": node("VHS_VideoCombine", filename_prefix="v", save_output=False),
        "2": node("SaveImage", filename_prefix="i"),
    }

    require_saving_node(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        {"1": node("VHS_VideoCombine", filename_prefix="v", save_output=False)},
        {"1": node("PreviewImage", images=["2", 0])},
    ],
)
def test_require_saving_node_rejects_a_prompt_without_outputs(prompt: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        require_saving_node(prompt)

    assert caught.value.status_code == 400
    assert caught.value.body() == {
        "error": 'Prompt must contain a node with a "filename_prefix" input, such as "SaveImage"',
        "location": "prompt",
    }
    assert caught.value.message == NO_SAVING_NODE


@pytest.mark.parametrize("class_type", ["LoadImage", "LoadImageMask", "SomeCustomNode"])
async def test_inline_images_are_written_for_any_node_class(
    preprocessor: Preprocessor, job: Job, input_dir: Path, class_type: str
) -> None:
    prompt = {"3": node(class_type, image=_b64(image_bytes("PNG")), upload="image")}

    await preprocessor.run(prompt, job)

    written = Path(prompt["3"]["inputs"]["image"])
    assert written.parent == input_dir
    assert written.suffix == ".png"
    assert job.input_files == [written]
    assert prompt["3"]["inputs"]["upload"] == "image"


async def test_an_existing_image_name_is_left_alone(preprocessor: Preprocessor, job: Job, input_dir: Path) -> None:
    (input_dir / "cat.png").write_bytes(image_bytes("PNG"))
    prompt = {"3": node("LoadImage", image="cat.png")}

    await preprocessor.run(prompt, job)

    assert prompt["3"]["inputs"]["image"] == "cat.png"
    assert job.input_files == []


async def test_a_linked_image_input_is_left_alone(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"3": node("ImageScale", image=["2", 0])}

    await preprocessor.run(prompt, job)

    assert prompt["3"]["inputs"]["image"] == ["2", 0]


async def test_a_bad_inline_image_names_the_node_and_input(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"3": node("LoadImage", image=_b64(b"this is plain text and no image format at all"))}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.status_code == 400
    assert error.location == "prompt.3.inputs.image"
    assert error.message == (
        "Failed to download image for node 3: "
        "Failed to parse base64 encoded file: Could not determine file type from base64 data"
    )


async def test_an_image_url_without_a_provider_names_thenode(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"12": node("LoadImage", image="https://example.com/cat.png")}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.12.inputs.image"
    assert (
        error.message
        == "Failed to download image for node 12: No storage provider found for URL: https://example.com/cat.png"
    )


async def test_load_audio_writes_inline_audio(preprocessor: Preprocessor, job: Job, input_dir: Path) -> None:
    prompt = {"4": node("LoadAudio", audio=_b64(WAV))}

    await preprocessor.run(prompt, job)

    written = Path(prompt["4"]["inputs"]["audio"])
    assert written.parent == input_dir
    assert written.suffix == ".wav"
    assert written.read_bytes() == WAV
    assert job.input_files == [written]


async def test_a_bad_audio_input_names_the_audio_location(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"4": node("LoadAudio", audio="/no/such/file.wav")}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.4.inputs.audio"
    assert error.message.startswith("Failed to download audio for node 4: Local file not found: /no/such/file.wav")


@pytest.mark.parametrize("input_name", ["video", "file"])
async def test_load_video_writes_inline_video_from_either_input(
    preprocessor: Preprocessor, job: Job, input_dir: Path, input_name: str
) -> None:
    prompt = {"5": node("LoadVideo", **{input_name: _b64(MP4)})}

    await preprocessor.run(prompt, job)

    written = Path(prompt["5"]["inputs"][input_name])
    assert written.parent == input_dir
    assert written.suffix == ".mp4"
    assert job.input_files == [written]


@pytest.mark.parametrize("input_name", ["video", "file"])
async def test_a_bad_video_input_reports_the_video_location(
    preprocessor: Preprocessor, job: Job, input_name: str
) -> None:
    prompt = {"5": node("LoadVideo", **{input_name: "http://example.com/clip.mp4"})}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.5.inputs.video"
    assert (
        error.message
        == "Failed to download video for node 5: No storage provider found for URL: http://example.com/clip.mp4"
    )


async def test_media_inputs_of_other_node_classes_are_left_alone(preprocessor: Preprocessor, job: Job) -> None:
    inline = _b64(WAV)
    prompt = {"6": node("SomeAudioNode", audio=inline), "7": node("SomeVideoNode", video=inline)}

    await preprocessor.run(prompt, job)

    assert prompt["6"]["inputs"]["audio"] == inline
    assert prompt["7"]["inputs"]["video"] == inline
    assert job.input_files == []


async def test_directory_nodes_get_a_job_folder_of_files(
    preprocessor: Preprocessor, job: Job, input_dir: Path, tmp_path: Path
) -> None:
    (input_dir / "existing.png").write_bytes(image_bytes("PNG"))
    elsewhere = tmp_path / "elsewhere.gif"
    elsewhere.write_bytes(image_bytes("GIF"))
    inline = image_bytes("JPEG")
    prompt = {"8": node("VHS_LoadImages", directory=["existing.png", str(elsewhere), _b64(inline)])}

    await preprocessor.run(prompt, job)

    folder = input_dir / "job1"
    assert prompt["8"]["inputs"]["directory"] == "job1"
    assert job.input_dirs == [folder]
    entries = sorted(folder.iterdir())
    assert len(entries) == 3
    assert (folder / "existing.png").resolve() == (input_dir / "existing.png").resolve()
    assert (folder / "elsewhere.gif").resolve() == elsewhere.resolve()
    written = [entry for entry in entries if entry.suffix == ".jpg"]
    assert len(written) == 1
    assert written[0].read_bytes() == inline


async def test_an_unknown_directory_entry_names_the_node_and_input(
    preprocessor: Preprocessor, job: Job, input_dir: Path
) -> None:
    prompt = {"8": node("VHS_LoadImagesPath", directory=["missing.png"])}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.8.inputs.directory"
    assert error.message.startswith("Failed to download images for node 8: ")
    assert "missing.png" in error.message
    assert job.input_dirs == [input_dir / "job1"]  # recorded for cleanup even on failure


async def test_a_duplicated_directory_entry_is_a_bad_request(
    preprocessor: Preprocessor, job: Job, input_dir: Path
) -> None:
    (input_dir / "a.png").write_bytes(image_bytes("PNG"))
    prompt = {"8": node("VHS_LoadImages", directory=["a.png", "a.png"])}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.8.inputs.directory"


async def test_a_directory_given_as_a_name_is_left_alone(preprocessor: Preprocessor, job: Job, input_dir: Path) -> None:
    prompt = {"8": node("VHS_LoadImages", directory="my_frames")}

    await preprocessor.run(prompt, job)

    assert prompt["8"]["inputs"]["directory"] == "my_frames"
    assert job.input_dirs == []
    assert not (input_dir / "job1").exists()
