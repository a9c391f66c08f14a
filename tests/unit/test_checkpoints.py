"""Checkpoints: the leftovers of unfinished saves, and checkpoints staged locally and copied to
the run directory (``train.local_checkpoint_dir``)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import numpy as np
import pytest

from imgae_dx_jax import checkpoints
from imgae_dx_jax.checkpoints import MIRROR_TMP_PREFIX, Checkpoints, Mirror
from imgae_dx_jax.config import load_config
from imgae_dx_jax.errors import CheckpointError, ConfigError
from imgae_dx_jax.training import train


class Killed(Exception):
    """Stands for the process dying where it is raised."""


def fake_step(directory: Path, step: int, text: str = "x") -> Path:
    """A step directory of a few files in nested directories."""
    root = directory / str(step)
    for name in ("_CHECKPOINT_METADATA", "model/manifest.ocdbt", "model/d/a", "opt/d/b", "meta/m"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{text} {step} {name}")
    return root


def contents(step_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(step_dir)): p.read_text() for p in step_dir.rglob("*") if p.is_file()}


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def dying_copy(kill_at: int, final: Path) -> Callable[[str, str], None]:
    """The mirror's file copy, killed before copying file number ``kill_at`` (from 0)."""
    copy, copied = checkpoints._copy_file, []

    def copy_file(source: str, destination: str) -> None:
        assert not final.exists(), "a partial step under its final name"
        if len(copied) == kill_at:
            raise Killed
        copy(source, destination)
        copied.append(destination)

    return copy_file


def test_a_copy_killed_at_any_file_leaves_only_complete_checkpoints(tmp_path, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "remote"
    fake_step(local, 7)
    n_files = len(contents(local / "7"))
    for kill_at in range(n_files):
        shutil.rmtree(remote, ignore_errors=True)
        fake_step(remote, 3)
        with monkeypatch.context() as patch:
            patch.setattr(checkpoints, "_copy_file", dying_copy(kill_at, remote / "7"))
            with pytest.raises(Killed):
                Mirror(local, remote).push(7, keep={3, 7})
        assert names(remote) == {"3", f"{MIRROR_TMP_PREFIX}7"}
        Mirror(tmp_path / f"new machine {kill_at}", remote).pull()  # a restart
        assert names(remote) == {"3"}
    monkeypatch.setattr(checkpoints, "_copy_file", dying_copy(n_files + 1, remote / "7"))
    Mirror(local, remote).push(7, keep={7})
    assert names(remote) == {"7"}
    assert contents(remote / "7") == contents(local / "7")


def test_a_removal_killed_midway_leaves_no_partial_step(tmp_path, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "remote"
    fake_step(local, 5)
    fake_step(remote, 2)

    def dying_rmtree(path: object, *args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(checkpoints.shutil, "rmtree", dying_rmtree)
    with pytest.raises(Killed):
        Mirror(local, remote).push(5, keep={5})
    assert names(remote) == {"5", f"{MIRROR_TMP_PREFIX}2"}


def test_pull_makes_the_staging_directory_a_copy_of_the_run_directory(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    for step in (2, 4):
        fake_step(remote, step)
    fake_step(local, 4, text="another run's, longer")
    fake_step(local, 5)  # written, never copied: the run directory does not have it
    (local / f"{MIRROR_TMP_PREFIX}2").mkdir()
    (remote / f"{MIRROR_TMP_PREFIX}6").mkdir()
    Mirror(local, remote).pull()
    assert names(local) == names(remote) == {"2", "4"}
    for step in ("2", "4"):
        assert contents(local / step) == contents(remote / step)


def save(ckpts: Checkpoints, step: int, val_loss: float | None = None) -> None:
    state = {"w": np.full((3,), step, np.float32)}
    data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
    ckpts.save(step, state, {"mu": state["w"] * 2}, data_iter, {"step": step}, val_loss)


def test_a_new_machine_restores_from_the_run_directory_alone(tmp_path):
    remote, local = tmp_path / "run" / "checkpoints", tmp_path / "local"
    ckpts = Checkpoints(remote, keep=2, staging=local)
    for step in (1, 2, 3, 4):
        save(ckpts, step, val_loss=0.5 if step == 1 else None)
    ckpts.close()
    assert names(remote) == names(local) == {"1", "3", "4"}  # the newest 2 and the best

    shutil.rmtree(local)
    ckpts = Checkpoints(remote, keep=2, staging=tmp_path / "new machine")
    step, restored = ckpts.restore_latest(None, None)
    ckpts.close()
    assert step == 4 and restored["meta"] == {"step": 4}
    np.testing.assert_array_equal(restored["model"]["w"], np.full((3,), 4, np.float32))


def test_a_failed_copy_is_reported_by_wait(tmp_path, monkeypatch):
    def full_disk(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    ckpts = Checkpoints(tmp_path / "checkpoints", staging=tmp_path / "local")
    save(ckpts, 1)
    ckpts.wait()
    monkeypatch.setattr(checkpoints, "_copy_file", full_disk)
    save(ckpts, 2)
    with pytest.raises(CheckpointError, match=r"checkpoint 2 is written in .* could not be copied"):
        ckpts.wait()
    ckpts.close()
    assert names(tmp_path / "checkpoints") == {"1", f"{MIRROR_TMP_PREFIX}2"}


def test_a_run_of_several_processes_writes_checkpoints_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = load_config(overrides=[f"train.local_checkpoint_dir={tmp_path / 'local'}"])
    with pytest.raises(ConfigError, match=r"train\.local_checkpoint_dir: every process"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "local").exists()


def test_an_unfinished_save_still_being_written_is_removed(tmp_path, monkeypatch):
    # A save that failed in this process (a notebook cell rerun after a full disk) may still be
    # writing into its temporary directory when the run directory is opened again: a deletion
    # then meets files written after it listed the directory ("Directory not empty").
    directory = tmp_path / "checkpoints"
    fake_step(directory, 2)
    busy = directory / "4.orbax-checkpoint-tmp" / "model" / "d"
    busy.mkdir(parents=True)
    rmtree, late = shutil.rmtree, iter(range(3))

    def racing_rmtree(path: str) -> None:
        write = next(late, None)
        if write is not None:  # a late write lands while the directory is being deleted
            (busy / f"late {write}").write_bytes(b"x")
            raise OSError(errno.ENOTEMPTY, "Directory not empty", "d")
        rmtree(path)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", racing_rmtree)
    checkpoints.remove_unfinished_saves(directory)
    assert names(directory) == {"2"}


def test_a_leftover_that_cannot_be_removed_is_an_error_after_the_patience(tmp_path, monkeypatch):
    (tmp_path / "4.orbax-checkpoint-tmp").mkdir()

    def refuse(path: str) -> None:
        raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))

    monkeypatch.setattr(checkpoints.shutil, "rmtree", refuse)
    with pytest.raises(OSError, match="Directory not empty"):
        checkpoints.remove_unfinished_saves(tmp_path, patience_s=0.2)


# tensorstore's messages for a write that hit a file-size limit, as Orbax raised them (paths
# shortened): a chunk's write, and the write of a driver's metadata while it is opened, whose
# message carries the spec (with brackets and escaped quotes) before the error code.
_PREFIX = 'OUT_OF_RANGE: Error writing "a/0" in OCDBT database at local file "/c/4.tmp/": '
_FAILED = 'Failed writing: "/c/4.tmp/d/34.__lock": Failed to write 367349 bytes to file 4: '
_SPEC = (
    '{\\"create\\":true,\\"driver\\":\\"zarr\\",\\"kvstore\\":{\\"path\\":\\"/c/4.tmp/\\"},'
    '\\"metadata\\":{\\"chunks\\":[8],\\"shape\\":[8]},\\"path\\":\\"up.2.norm.bias.value/\\"}'
)


@pytest.mark.parametrize(
    "message",
    [
        f"{_PREFIX}{_FAILED}File too large [os_error_code='27']",
        f'OUT_OF_RANGE: Error opening "zarr" driver: {_PREFIX}{_FAILED}File too large '
        f"[tensorstore_spec='{_SPEC}'] [os_error_code='27']",
    ],
)
def test_the_cause_of_a_failed_write_is_the_os_error(message):
    assert checkpoints.write_error_cause(ValueError(message)) == "File too large (errno 27)"


def test_the_cause_of_an_os_error_is_its_reason_and_of_another_error_its_first_line():
    no_space = OSError(errno.ENOSPC, "No space left on device")
    assert checkpoints.write_error_cause(no_space) == "No space left on device (errno 28)"
    assert checkpoints.write_error_cause(ValueError("bad value\nmore")) == "bad value"
