"""Output files of a finished prompt: which, in what order, and how they are removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyui_api.errors import ApiError
from comfyui_api.pipeline.outputs import OutputFile, collect_outputs, delete_files, require_present


def _item(filename: str, subfolder: str = "", kind: str | None = "output") -> dict[str, Any]:
    item: dict[str, Any] = {"filename": filename, "subfolder": subfolder}
    if kind is not None:
        item["type"] = kind
    return item


def _names(files: list[OutputFile]) -> list[str]:
    return [file.name for file in files]


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


def test_nodes_in_node_order_come_first_then_history_order(output_dir: Path) -> None:
    entry = {
        "outputs": {
            "1": {"images": [_item("one.png")]},
            "2": {"images": [_item("two.png")]},
            "3": {"images": [_item("three.png")]},
        }
    }

    files = collect_outputs(entry, output_dir, node_order=["3", "missing", "1"])

    assert _names(files) == ["three.png", "one.png", "two.png"]
    assert [file.node_id for file in files] == ["3", "1", "2"]


def test_without_node_order_history_order_is_kept(output_dir: Path) -> None:
    entry = {"outputs": {"9": {"images": [_item("b.png"), _item("a.png")], "gifs": [_item("c.mp4")]}}}

    assert _names(collect_outputs(entry, output_dir)) == ["b.png", "a.png", "c.mp4"]


def test_paths_are_absolute_in_the_output_folder(output_dir: Path) -> None:
    entry = {"outputs": {"9": {"images": [_item("x.png")]}}}

    [file] = collect_outputs(entry, output_dir)

    assert file == OutputFile(node_id="9", path=output_dir.resolve() / "x.png", name="x.png")


def test_temp_items_are_not_results(output_dir: Path) -> None:
    entry = {"outputs": {"9": {"images": [_item("kept.png"), _item("preview.png", kind="temp")]}}}

    assert _names(collect_outputs(entry, output_dir)) == ["kept.png"]


def test_items_without_a_type_count_as_outputs(output_dir: Path) -> None:
    entry = {"outputs": {"9": {"images": [_item("old.png", kind=None)]}}}

    assert _names(collect_outputs(entry, output_dir)) == ["old.png"]


def test_items_without_a_filename_and_non_file_values_are_skipped(output_dir: Path) -> None:
    entry = {
        "outputs": {
            "9": {
                "images": [{"subfolder": "", "type": "output"}, {"filename": "", "type": "output"}, _item("x.png")],
                "text": ["some text"],
                "animated": [False],
                "flag": True,
            },
            "10": "not a dict",
        }
    }

    assert _names(collect_outputs(entry, output_dir)) == ["x.png"]


def test_subfolders_are_honoured(output_dir: Path) -> None:
    entry = {"outputs": {"9": {"images": [_item("x.png", subfolder="sub")]}}}

    [file] = collect_outputs(entry, output_dir)

    assert file.name == "sub/x.png"
    assert file.path == output_dir.resolve() / "sub" / "x.png"


@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [("passwd", "../../etc"), ("x.png", ".."), ("passwd", "/etc"), ("/etc/passwd", ""), ("../x.png", "")],
)
def test_items_that_escape_the_output_folder_are_ignored(output_dir: Path, filename: str, subfolder: str) -> None:
    entry = {"outputs": {"9": {"images": [_item(filename, subfolder=subfolder)]}}}

    assert collect_outputs(entry, output_dir) == []


def test_duplicates_are_removed(output_dir: Path) -> None:
    entry = {
        "outputs": {
            "1": {"images": [_item("x.png"), _item("x.png")]},
            "2": {"images": [_item("x.png", subfolder=""), _item("y.png")]},
        }
    }

    files = collect_outputs(entry, output_dir)

    assert _names(files) == ["x.png", "y.png"]
    assert [file.node_id for file in files] == ["1", "2"]


@pytest.mark.parametrize("entry", [{}, {"outputs": None}, {"outputs": {}}])
def test_an_entry_without_outputs_has_no_files(output_dir: Path, entry: dict[str, Any]) -> None:
    assert collect_outputs(entry, output_dir) == []


def test_require_present_accepts_existing_files(output_dir: Path) -> None:
    (output_dir / "x.png").write_bytes(b"x")

    require_present([OutputFile(node_id="9", path=output_dir / "x.png", name="x.png")])


def test_require_present_names_every_missing_file(output_dir: Path) -> None:
    (output_dir / "x.png").write_bytes(b"x")
    files = [
        OutputFile(node_id="9", path=output_dir / "x.png", name="x.png"),
        OutputFile(node_id="9", path=output_dir / "gone.png", name="gone.png"),
        OutputFile(node_id="9", path=output_dir / "sub" / "lost.png", name="sub/lost.png"),
    ]

    with pytest.raises(ApiError) as caught:
        require_present(files)

    assert caught.value.status_code == 500
    assert caught.value.message == "ComfyUI reported output files that do not exist: gone.png, sub/lost.png"


def test_delete_files_removes_files_and_emptied_folders_but_not_stop_at(output_dir: Path) -> None:
    deep = output_dir / "a" / "b" / "c"
    deep.mkdir(parents=True)
    files = [deep / "x.png", output_dir / "a" / "y.png", output_dir / "top.png"]
    for path in files:
        path.write_bytes(b"x")

    delete_files(files, stop_at=output_dir)

    assert output_dir.is_dir()
    assert list(output_dir.iterdir()) == []


def test_delete_files_keeps_folders_that_are_not_empty(output_dir: Path) -> None:
    folder = output_dir / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"x")
    (output_dir / "a" / "keep.png").write_bytes(b"x")

    delete_files([folder / "x.png"], stop_at=output_dir)

    assert not folder.exists()
    assert (output_dir / "a" / "keep.png").is_file()


def test_delete_files_never_removes_folders_outside_stop_at(tmp_path: Path, output_dir: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"x")

    delete_files([outside / "x.png"], stop_at=output_dir)

    assert not (outside / "x.png").exists()
    assert outside.is_dir()


def test_delete_files_tolerates_missing_files(output_dir: Path) -> None:
    (output_dir / "sub").mkdir()

    delete_files([output_dir / "sub" / "never-written.png"], stop_at=output_dir)

    assert not (output_dir / "sub").exists()
    assert output_dir.is_dir()
