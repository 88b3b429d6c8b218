"""Placing cached files for ComfyUI: inputs as hard links or copies (never symlinks), atomically."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from comfyui_api.storage.staging import stage_file, symlink, unique_name


def test_an_input_is_a_hard_link_to_the_cache_file_on_the_same_file_system(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "abc.png"
    cached.parent.mkdir()
    cached.write_bytes(b"png bytes")
    staged = stage_file(cached, tmp_path / "input", "abc-1.png")
    assert not staged.is_symlink() and staged.read_bytes() == b"png bytes"
    assert os.stat(staged).st_ino == os.stat(cached).st_ino
    assert sorted(path.name for path in staged.parent.iterdir()) == ["abc-1.png"]  # no temporary left


def test_evicting_the_cache_file_leaves_the_staged_input_whole(tmp_path: Path) -> None:
    cached = tmp_path / "abc.png"
    cached.write_bytes(b"png bytes")
    staged = stage_file(cached, tmp_path / "input", "abc-1.png")
    cached.unlink()  # what LRU eviction does
    assert staged.read_bytes() == b"png bytes"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second file system (tmpfs at /dev/shm)")
def test_across_file_systems_the_input_is_a_copy(tmp_path: Path) -> None:
    cached = tmp_path / "abc.png"
    cached.write_bytes(b"png bytes")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        staged = stage_file(cached, Path(other), "abc-1.png")
        assert os.stat(staged).st_dev != os.stat(cached).st_dev
        assert not staged.is_symlink() and staged.read_bytes() == b"png bytes"
        cached.write_bytes(b"changed")  # a copy, not a link
        assert staged.read_bytes() == b"png bytes"


def test_concurrent_stagings_of_one_file_each_get_their_own_whole_file(tmp_path: Path) -> None:
    cached = tmp_path / "abc.bin"
    cached.write_bytes(os.urandom(1024 * 1024))
    names = [unique_name(cached) for _ in range(16)]
    assert len(set(names)) == 16 and all(name.startswith("abc-") and name.endswith(".bin") for name in names)
    threads = [threading.Thread(target=stage_file, args=(cached, tmp_path / "input", name)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    staged = sorted((tmp_path / "input").iterdir())
    assert [path.name for path in staged] == sorted(names)
    assert all(path.read_bytes() == cached.read_bytes() for path in staged)


def test_exclusive_staging_refuses_a_name_twice(tmp_path: Path) -> None:
    source = tmp_path / "a.png"
    source.write_bytes(b"a")
    stage_file(source, tmp_path / "input", "a.png", exclusive=True)
    with pytest.raises(FileExistsError):
        stage_file(source, tmp_path / "input", "a.png", exclusive=True)


def test_models_stay_symlinks_and_a_real_file_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"weights")
    link = tmp_path / "models" / "checkpoints" / "model.safetensors"
    symlink(link, target)
    assert link.is_symlink() and link.read_bytes() == b"weights"
    real = tmp_path / "models" / "checkpoints" / "mine.safetensors"
    real.write_bytes(b"mine")
    symlink(real, target)
    assert not real.is_symlink() and real.read_bytes() == b"mine"
