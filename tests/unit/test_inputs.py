"""MediaInputs: which values name existing files, and how inline data and URLs become files."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from comfyui_api.errors import InputError
from comfyui_api.pipeline.inputs import MediaInputs
from tests.unit.samples import IMAGE_FORMATS, image_bytes

UUID_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(?P<ext>\w+)$")
UNSNIFFABLE = "Failed to parse base64 encoded file: Could not determine file type from base64 data"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("name", ["x.png", "sub/x.png", "x.png [input]"])
async def test_existing_input_names_are_left_alone(media: MediaInputs, input_dir: Path, name: str) -> None:
    _touch(input_dir / "x.png")
    _touch(input_dir / "sub" / "x.png")

    assert await media.resolve(name) == (name, None)
    assert media.existing_name(name) is not None


def test_an_input_annotation_refers_to_the_input_folder(media: MediaInputs, input_dir: Path) -> None:
    target = _touch(input_dir / "x.png")

    assert media.existing_name("x.png [input]") == target.resolve()


def test_an_output_annotation_refers_to_the_output_folder(media: MediaInputs, output_dir: Path) -> None:
    target = _touch(output_dir / "x.png")

    assert media.existing_name("x.png [output]") == target.resolve()
    assert media.existing_name("x.png") is None


async def test_an_existing_output_name_is_left_alone(media: MediaInputs, output_dir: Path) -> None:
    _touch(output_dir / "x.png")

    assert await media.resolve("x.png [output]") == ("x.png [output]", None)


def test_an_output_annotation_does_not_find_an_input_file(media: MediaInputs, input_dir: Path) -> None:
    _touch(input_dir / "x.png")

    assert media.existing_name("x.png [output]") is None


@pytest.mark.parametrize("name", ["../x.png", "sub/../../x.png", "../x.png [input]", "../input/../x.png"])
def test_names_that_escape_the_folder_are_not_existing(media: MediaInputs, tmp_path: Path, name: str) -> None:
    _touch(tmp_path / "x.png")  # the parent of the input folder

    assert media.existing_name(name) is None


def test_a_symlink_out_of_the_input_folder_is_not_existing(media: MediaInputs, input_dir: Path, tmp_path: Path) -> None:
    outside = _touch(tmp_path / "secret.png")
    (input_dir / "link.png").symlink_to(outside)

    assert media.existing_name("link.png") is None


@pytest.mark.parametrize("name", ["", "a\x00b.png", "x" * 5000])
def test_degenerate_names_are_not_existing(media: MediaInputs, name: str) -> None:
    assert media.existing_name(name) is None


async def test_base64_is_written_as_a_uuid_file_in_the_input_folder(media: MediaInputs, input_dir: Path) -> None:
    data = image_bytes("PNG")

    value, written = await media.resolve(base64.b64encode(data).decode())

    assert written is not None
    assert value == str(written)
    assert Path(value).is_absolute()
    assert written.parent == input_dir
    match = UUID_NAME.match(written.name)
    assert match is not None
    assert match["ext"] == "png"
    assert written.read_bytes() == data
    assert _files(input_dir) == [written]  # no partial file left behind


@pytest.mark.parametrize(("pillow_format", "extension"), IMAGE_FORMATS.items())
async def test_inline_images_of_every_format_get_their_extension(
    media: MediaInputs, input_dir: Path, pillow_format: str, extension: str
) -> None:
    encoded = base64.b64encode(image_bytes(pillow_format)).decode()  # JPEG's starts with "/9j/", like a path

    value, written = await media.resolve(encoded)

    assert written is not None
    assert written.suffix == f".{extension}"
    assert value == str(written)


async def test_a_data_url_is_written_with_the_sniffed_extension(media: MediaInputs, input_dir: Path) -> None:
    data = image_bytes("JPEG")

    value, written = await media.resolve("data:image/png;base64," + base64.b64encode(data).decode())

    assert written is not None
    assert value == str(written)
    assert written.parent == input_dir
    assert written.suffix == ".jpg"  # from the bytes, not the declared mime type
    assert written.read_bytes() == data


async def test_each_inline_value_gets_its_own_file(media: MediaInputs, input_dir: Path) -> None:
    encoded = base64.b64encode(image_bytes("GIF")).decode()

    _, first = await media.resolve(encoded)
    _, second = await media.resolve(encoded)

    assert first != second
    assert _files(input_dir) == sorted([first, second])


async def test_inline_data_can_be_written_to_another_folder(media: MediaInputs, tmp_path: Path) -> None:
    destination = tmp_path / "input" / "job1"

    _, written = await media.resolve(base64.b64encode(image_bytes("PNG")).decode(), destination)

    assert written is not None
    assert written.parent == destination


async def test_unsniffable_base64_is_an_input_error_with_the_reference_message(
    media: MediaInputs, input_dir: Path
) -> None:
    encoded = base64.b64encode(b"just some text that is no known file format").decode()

    with pytest.raises(InputError) as caught:
        await media.resolve(encoded)

    assert str(caught.value) == UNSNIFFABLE
    assert _files(input_dir) == []


async def test_undecodable_base64_is_an_input_error(media: MediaInputs, input_dir: Path) -> None:
    with pytest.raises(InputError, match=r"^Failed to parse base64 encoded file: "):
        await media.resolve("A" * 33)

    assert _files(input_dir) == []


async def test_a_url_without_a_fetcher_is_an_input_error(media: MediaInputs) -> None:
    url = "http://example.com/cat.png"

    with pytest.raises(InputError) as caught:
        await media.resolve(url)

    assert str(caught.value) == f"No storage provider found for URL: {url}"


async def test_a_url_is_fetched_into_the_input_folder(input_dir: Path, output_dir: Path) -> None:
    calls: list[tuple[str, Path]] = []

    async def fetch(url: str, folder: Path) -> Path:
        calls.append((url, folder))
        return _touch(folder / "cat.png")

    media = MediaInputs(input_dir, output_dir, fetch_url=fetch)

    value, written = await media.resolve("s3://bucket/cat.png")

    assert calls == [("s3://bucket/cat.png", input_dir)]
    assert value == str(input_dir / "cat.png")
    assert written is None  # the storage layer owns downloaded files


@pytest.mark.parametrize("folder", ["input", "output"])
async def test_an_absolute_path_under_the_input_or_output_folder_passes_through(
    media: MediaInputs, tmp_path: Path, folder: str
) -> None:
    inside = _touch(tmp_path / folder / "sub" / "x.png")

    assert await media.resolve(str(inside)) == (str(inside.resolve()), None)


async def test_an_absolute_path_under_an_allowed_folder_passes_through(
    input_dir: Path, output_dir: Path, tmp_path: Path
) -> None:
    shared = _touch(tmp_path / "shared" / "x.png")
    media = MediaInputs(input_dir, output_dir, allowed_dirs=(tmp_path / "shared",))

    assert await media.resolve(str(shared)) == (str(shared.resolve()), None)


async def test_a_relative_path_is_resolved_from_the_current_folder(
    media: MediaInputs, input_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = _touch(input_dir / "x.png")
    monkeypatch.chdir(input_dir / "..")

    assert await media.resolve("./input/x.png") == (str(inside.resolve()), None)
    monkeypatch.chdir(input_dir)
    with pytest.raises(InputError, match=r"^Local file not allowed: \.\./x\.png: "):
        await media.resolve("../x.png")


def _not_allowed(value: str) -> str:
    return re.escape(
        f"Local file not allowed: {value}: only files under INPUT_DIR, OUTPUT_DIR or INPUT_ALLOWED_DIRS can be used"
    )


async def test_an_absolute_path_outside_the_allowed_folders_is_refused(media: MediaInputs, tmp_path: Path) -> None:
    elsewhere = _touch(tmp_path / "elsewhere" / "x.png")

    assert media.existing_path(str(elsewhere)) is None
    with pytest.raises(InputError, match=f"^{_not_allowed(str(elsewhere))}$"):
        await media.resolve(str(elsewhere))


async def test_a_missing_path_outside_the_allowed_folders_is_refused_too(media: MediaInputs, tmp_path: Path) -> None:
    """Whether a file exists outside the allowed folders is not for the client to learn."""
    missing = tmp_path / "nowhere" / "x.png"

    with pytest.raises(InputError, match=f"^{_not_allowed(str(missing))}$"):
        await media.resolve(str(missing))
    with pytest.raises(InputError, match=f"^{_not_allowed('/etc/passwd')}$"):
        await media.resolve("/etc/passwd")


async def test_a_path_that_climbs_out_of_the_input_folder_is_refused(
    media: MediaInputs, input_dir: Path, tmp_path: Path
) -> None:
    _touch(tmp_path / "secret.png")
    climbing = f"{input_dir}/../secret.png"

    with pytest.raises(InputError, match=f"^{_not_allowed(climbing)}$"):
        await media.resolve(climbing)


async def test_a_symlink_in_the_input_folder_to_a_file_outside_is_refused(
    media: MediaInputs, input_dir: Path, tmp_path: Path
) -> None:
    outside = _touch(tmp_path / "secret.png")
    link = input_dir / "link.png"
    link.symlink_to(outside)

    assert media.existing_path(str(link)) is None
    with pytest.raises(InputError, match=f"^{_not_allowed(str(link))}$"):
        await media.resolve(str(link))


async def test_a_missing_absolute_path_inside_the_allowed_folders_is_not_found(
    media: MediaInputs, input_dir: Path
) -> None:
    missing = input_dir / "nowhere" / "x.png"

    with pytest.raises(InputError, match=f"^{re.escape(f'Local file not found: {missing}')}$"):
        await media.resolve(str(missing))


@pytest.mark.parametrize("name", ["unknown.png", "sub/unknown.png", "unknown.png [output]"])
async def test_an_unknown_name_passes_through_for_comfyui_to_validate(
    media: MediaInputs, input_dir: Path, name: str
) -> None:
    assert await media.resolve(name) == (name, None)
    assert _files(input_dir) == []
