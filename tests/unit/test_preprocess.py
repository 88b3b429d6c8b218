"""Preprocessor: output prefixes and media inputs rewritten before a prompt is queued."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_api.config import Settings
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
from comfyui_api.storage.cache import cache_key
from comfyui_api.storage.manager import StorageManager
from comfyui_api.storage.net import UrlGuard
from tests.support.files import FileServer
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


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[StorageManager]:
    manager = StorageManager(
        Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"),
        UrlGuard(block_private=False),  # the file server listens on loopback
    )
    yield manager
    await manager.aclose()


async def test_a_media_url_is_staged_in_the_input_folder_and_a_model_url_is_linked(
    input_dir: Path, output_dir: Path, tmp_path: Path, storage: StorageManager, job: Job
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "cat.png").write_bytes(image_bytes("PNG"))
    (served / "model.safetensors").write_bytes(b"weights")
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=output_dir,
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        storage=storage,
    )
    with FileServer(served) as files:
        image_url, model_url = f"{files.url}/cat.png", f"{files.url}/model.safetensors"
        prompt = {
            "3": node("LoadImage", image=image_url),
            "4": node("CheckpointLoaderSimple", ckpt_name=model_url),
        }
        await preprocessor.run(prompt, job)

    # The image: a hard link or copy of the request's own, `<cache name stem>-<uuid hex><ext>`, deleted at the end.
    staged = Path(prompt["3"]["inputs"]["image"])
    assert staged.parent == input_dir
    assert re.fullmatch(rf"{cache_key(image_url)}-[0-9a-f]{{32}}\.png", staged.name)
    assert not staged.is_symlink() and staged.read_bytes() == (served / "cat.png").read_bytes()
    assert job.input_files == [staged]
    # The model: a symlink into the cache, as before.
    model = tmp_path / "models" / "checkpoints" / prompt["4"]["inputs"]["ckpt_name"]
    assert model.is_symlink() and model.read_bytes() == b"weights"
    assert [(download.link, download.staged) for download in job.downloads] == [(staged, True), (model, False)]
    assert os.path.samefile(staged, job.downloads[0].target)  # a hard link to the cache file (one file system)


async def test_each_request_stages_its_own_copy_of_a_url(
    input_dir: Path, output_dir: Path, tmp_path: Path, storage: StorageManager
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "cat.png").write_bytes(image_bytes("PNG"))
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=output_dir,
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        storage=storage,
    )
    jobs = [Job(id="a"), Job(id="b")]
    with FileServer(served) as files:
        for one in jobs:
            await preprocessor.run({"3": node("LoadImage", image=f"{files.url}/cat.png")}, one)
        assert files.count("/cat.png") == 1  # one download, through the cache

    first, second = (one.input_files[0] for one in jobs)
    assert first != second and first.parent == second.parent == input_dir
    first.unlink()  # one request's cleanup leaves the other's file alone
    assert second.read_bytes() == (served / "cat.png").read_bytes()


async def test_a_media_url_to_a_private_address_is_refused(
    input_dir: Path, output_dir: Path, tmp_path: Path, job: Job
) -> None:
    storage = StorageManager(Settings(cache_dir=tmp_path / "cache", comfy_home=tmp_path / "comfy"), UrlGuard())
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=output_dir,
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        storage=storage,
    )
    prompt = {"3": node("LoadImage", image="http://127.0.0.1:9/cat.png?sig=secret")}

    error = await _bad_request(preprocessor, prompt, job)
    await storage.aclose()

    assert error.location == "prompt.3.inputs.image"
    assert error.message.startswith("Failed to download image for node 3: http://127.0.0.1:9/cat.png?<redacted> ")
    assert "loopback" in error.message and "secret" not in error.message
    assert job.input_files == [] and job.downloads == [] and list(input_dir.iterdir()) == []


async def test_load_audio_writes_inline_audio(preprocessor: Preprocessor, job: Job, input_dir: Path) -> None:
    prompt = {"4": node("LoadAudio", audio=_b64(WAV))}

    await preprocessor.run(prompt, job)

    written = Path(prompt["4"]["inputs"]["audio"])
    assert written.parent == input_dir
    assert written.suffix == ".wav"
    assert written.read_bytes() == WAV
    assert job.input_files == [written]


async def test_a_bad_audio_input_names_the_audio_location(
    preprocessor: Preprocessor, job: Job, input_dir: Path
) -> None:
    missing = input_dir / "no" / "such" / "file.wav"
    prompt = {"4": node("LoadAudio", audio=str(missing))}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.4.inputs.audio"
    assert error.message == f"Failed to download audio for node 4: Local file not found: {missing}"


async def test_a_path_outside_the_allowed_folders_is_refused(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"4": node("LoadAudio", audio="/no/such/file.wav")}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.4.inputs.audio"
    assert error.message == (
        "Failed to download audio for node 4: Local file not allowed: /no/such/file.wav: "
        "only files under INPUT_DIR, OUTPUT_DIR or INPUT_ALLOWED_DIRS can be used"
    )


async def test_a_path_under_an_allowed_folder_is_used_in_place(
    input_dir: Path, output_dir: Path, tmp_path: Path, job: Job
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "clip.wav").write_bytes(WAV)
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=output_dir,
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        allowed_dirs=(shared,),
    )
    prompt = {"4": node("LoadAudio", audio=str(shared / "clip.wav"))}

    await preprocessor.run(prompt, job)

    assert prompt["4"]["inputs"]["audio"] == str((shared / "clip.wav").resolve())
    assert job.input_files == []  # not the request's to delete


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


def _job_folder(job: Job, input_dir: Path) -> Path:
    """The one folder the job's directory input got: new, in the input folder, named `<job id>-<random>`."""
    (folder,) = job.input_dirs
    assert folder.parent == input_dir
    assert folder.name.startswith(f"{job.id}-") and folder.name != f"{job.id}-"
    return folder


async def test_directory_nodes_get_a_job_folder_of_files(
    input_dir: Path, output_dir: Path, tmp_path: Path, job: Job
) -> None:
    (input_dir / "existing.png").write_bytes(image_bytes("PNG"))
    shared = tmp_path / "shared"
    shared.mkdir()
    elsewhere = shared / "elsewhere.gif"
    elsewhere.write_bytes(image_bytes("GIF"))
    inline = image_bytes("JPEG")
    preprocessor = Preprocessor(
        input_dir=input_dir,
        output_dir=output_dir,
        model_dir=tmp_path / "models",
        prepend_filenames=True,
        allowed_dirs=(shared,),
    )
    prompt = {"8": node("VHS_LoadImages", directory=["existing.png", str(elsewhere), _b64(inline)])}

    await preprocessor.run(prompt, job)

    folder = _job_folder(job, input_dir)
    assert prompt["8"]["inputs"]["directory"] == folder.name
    entries = sorted(folder.iterdir())
    assert len(entries) == 3
    assert not any(entry.is_symlink() for entry in entries)  # hard links or copies, never symlinks
    assert (folder / "existing.png").read_bytes() == (input_dir / "existing.png").read_bytes()
    assert (folder / "elsewhere.gif").read_bytes() == elsewhere.read_bytes()
    written = [entry for entry in entries if entry.suffix == ".jpg"]
    assert len(written) == 1
    assert written[0].read_bytes() == inline


async def test_a_directory_entry_outside_the_allowed_folders_is_refused(
    preprocessor: Preprocessor, job: Job, input_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.gif"
    elsewhere.write_bytes(image_bytes("GIF"))
    prompt = {"8": node("VHS_LoadImages", directory=[str(elsewhere)])}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.8.inputs.directory"
    assert error.message.startswith(f"Failed to download images for node 8: Local file not allowed: {elsewhere}: ")
    assert list(_job_folder(job, input_dir).iterdir()) == []


async def test_a_directory_input_never_reuses_an_existing_folder(preprocessor: Preprocessor, input_dir: Path) -> None:
    """Folders that were there before (ComfyUI's clipspace, one named like the job) are left alone."""
    (input_dir / "a.png").write_bytes(image_bytes("PNG"))
    for name in ("clipspace", "job1"):
        (input_dir / name).mkdir()
        (input_dir / name / "a.png").write_bytes(b"theirs")
    folders = []
    for directory in (["a.png"], ["a.png"]):  # two requests with the same job id and the same list
        job = Job(id="job1")
        prompt = {"8": node("VHS_LoadImages", directory=directory)}
        await preprocessor.run(prompt, job)
        folders.append(_job_folder(job, input_dir))
        assert prompt["8"]["inputs"]["directory"] == folders[-1].name

    assert len(set(folders)) == 2
    assert not {input_dir / "clipspace", input_dir / "job1"} & set(folders)
    for name in ("clipspace", "job1"):
        assert [path.name for path in (input_dir / name).iterdir()] == ["a.png"]
        assert (input_dir / name / "a.png").read_bytes() == b"theirs"


async def test_an_unknown_directory_entry_names_the_node_and_input(
    preprocessor: Preprocessor, job: Job, input_dir: Path
) -> None:
    prompt = {"8": node("VHS_LoadImagesPath", directory=["missing.png"])}

    error = await _bad_request(preprocessor, prompt, job)

    assert error.location == "prompt.8.inputs.directory"
    assert error.message.startswith("Failed to download images for node 8: ")
    assert "missing.png" in error.message
    assert _job_folder(job, input_dir).is_dir()  # recorded for cleanup even on failure


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
    assert list(input_dir.iterdir()) == []  # no job folder made


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_an_input_nested_deeper_than_the_limit_is_a_400_at_the_input(
    preprocessor: Preprocessor, job: Job
) -> None:
    """About 500 levels kill ComfyUI's prompt worker while its HTTP server keeps answering: refused up front."""
    for depth in (65, 500, 5000):
        prompt = {"1": node("SaveImage", images=nested(depth), filename_prefix="x")}
        error = await _bad_request(preprocessor, prompt, job)
        assert error.location == "prompt.1.inputs.images"
        assert error.message == "prompt.1.inputs.images: nested deeper than 64 levels"
    await preprocessor.run({"1": node("SaveImage", images=nested(64), filename_prefix="x")}, Job(id="ok"))


@pytest.mark.parametrize("prefix", ["a\x00b", "../escape", "sub/../../escape", "/abs/path", "back\\slash", "a\nb"])
async def test_a_saving_prefix_that_could_leave_the_output_folder_is_a_400(
    preprocessor: Preprocessor, job: Job, prefix: str
) -> None:
    error = await _bad_request(preprocessor, {"9": node("SaveImage", images=["1", 0], filename_prefix=prefix)}, job)
    assert error.location == "prompt.9.inputs.filename_prefix"


async def test_a_sub_folder_prefix_stays_allowed(preprocessor: Preprocessor, job: Job) -> None:
    prompt = {"9": node("SaveImage", images=["1", 0], filename_prefix="sub/dir/name")}
    await preprocessor.run(prompt, job)
    assert prompt["9"]["inputs"]["filename_prefix"] == "job1_sub/dir/name"


async def test_a_prefix_whose_file_name_would_not_fit_is_a_400(preprocessor: Preprocessor) -> None:
    long_id = "\u00e9" * 100  # 200 bytes in UTF-8: the most an id may have
    error = await _bad_request(
        preprocessor, {"9": node("SaveImage", images=["1", 0], filename_prefix="p" * 40)}, Job(id=long_id)
    )
    assert error.location == "prompt.9.inputs.filename_prefix"
    assert "over 255 bytes" in error.message


async def test_an_empty_image_is_a_400_at_the_image(preprocessor: Preprocessor, job: Job) -> None:
    error = await _bad_request(preprocessor, {"8": node("LoadImage", image="")}, job)
    assert (error.location, error.message) == ("prompt.8.inputs.image", "prompt.8.inputs.image: must not be empty")
