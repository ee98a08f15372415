"""Atomic checkpoint folders and finding the latest complete one.

A checkpoint is written into a hidden temporary folder next to its final place,
a marker file listing every file and its size is written last, the files and the
folder are flushed to disk, and only then is the folder renamed into place. A
process killed at any moment therefore leaves either the previous state or a
complete new checkpoint: never a folder that looks complete but is not. The
marker also catches copies made by tools that do not preserve atomicity (a
truncated file no longer matches its recorded size).

Layout of a run folder::

    run/
      checkpoint-10/              complete: holds checkpoint_complete.json
      checkpoint-20/
      .checkpoint-30.incomplete/  a save that was interrupted; ignored, replaced by the next save

Checkpoints written by transformers' ``Trainer`` (``checkpoint-<step>`` folders)
count as complete when their ``trainer_state.json`` (the file it writes last) is
readable, or when `MarkCheckpointCompleteCallback` marked them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

#: Name of a checkpoint folder: ``checkpoint-<step>`` (transformers' naming, shared on purpose).
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
#: A complete checkpoint moved aside while a new save of the same step replaced it (see `_swap_into_place`).
REPLACED_PATTERN = re.compile(r"^\.checkpoint-(\d+)\.replaced$")
#: Marker written last into a checkpoint folder: its presence (with matching file sizes) means complete.
COMPLETE_MARKER = "checkpoint_complete.json"
#: Written last by transformers' Trainer._save_checkpoint; used as the marker of its checkpoints.
TRANSFORMERS_STATE_FILE = "trainer_state.json"
MARKER_FORMAT = "rlft-checkpoint"
MARKER_VERSION = 1


# ---------------------------------------------------------------------- markers
def _manifest(folder: Path) -> dict[str, int]:
    """Relative path -> size in bytes of every file under ``folder`` (the marker excluded)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            out[path.relative_to(folder).as_posix()] = path.stat().st_size
    return out


def write_complete_marker(folder: PathLike, extra: Optional[dict] = None, fsync: bool = True) -> Path:
    """Write the completeness marker into ``folder`` (after everything else is written).

    The marker lists every file with its size, so a later truncation is detected.
    ``extra`` (JSON-serialisable) is stored alongside, e.g. the step.
    """
    folder = Path(folder)
    if fsync:
        _fsync_tree(folder)
    marker = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "created": time.time(),
        "files": _manifest(folder),
        **(extra or {}),
    }
    path = folder / COMPLETE_MARKER
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(folder)
    return path


def is_complete(folder: PathLike) -> bool:
    """True when ``folder`` is a finished checkpoint.

    rlft checkpoints: the marker exists, parses, and every file it lists exists with
    the recorded size. transformers Trainer checkpoints (no marker): ``trainer_state.json``
    exists and parses.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
            return all((folder / rel).is_file() and (folder / rel).stat().st_size == size for rel, size in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False
    state = folder / TRANSFORMERS_STATE_FILE
    if state.is_file():
        try:
            json.loads(state.read_text(encoding="utf-8"))
            return True
        except (OSError, ValueError):
            return False
    return False


# ---------------------------------------------------------------------- finding checkpoints
def checkpoint_step(folder: PathLike) -> Optional[int]:
    """The step of a ``checkpoint-<step>`` folder name, or None for any other name."""
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: PathLike, complete_only: bool = True) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``directory``, oldest step first (complete ones only by default)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = {}
    aside = {}
    for child in directory.iterdir():
        if not child.is_dir():
            continue
        step = checkpoint_step(child)
        if step is None:
            replaced = REPLACED_PATTERN.match(child.name)
            if replaced and is_complete(child):
                aside[int(replaced.group(1))] = child
            continue
        if complete_only and not is_complete(child):
            continue
        found[step] = child
    # A kill between the two renames of an overwrite leaves the old copy aside: it is still good.
    for step, child in aside.items():
        if step not in found and not (directory / f"{CHECKPOINT_PREFIX}{step}").exists():
            found[step] = child
    return [found[step] for step in sorted(found)]


def latest_checkpoint(directory: PathLike) -> Optional[Path]:
    """The complete ``checkpoint-<step>`` folder of ``directory`` with the highest step, or None.

    Incomplete folders (interrupted saves, truncated files, no marker) are skipped.
    """
    found = list_checkpoints(directory)
    return found[-1] if found else None


def resolve_checkpoint(path: PathLike) -> Path:
    """``path`` itself when it is a complete checkpoint, else the latest complete checkpoint inside it.

    Raises FileNotFoundError (naming the folder and what was looked for) when there is none,
    and ValueError when ``path`` is a checkpoint folder that is not complete.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint at {path}: the folder does not exist.")
    if is_complete(path):
        return path
    if checkpoint_step(path) is not None or (path / COMPLETE_MARKER).exists():
        raise ValueError(
            f"{path} is an incomplete checkpoint (its save was interrupted, or a file was truncated: "
            f"{COMPLETE_MARKER} is missing or does not match). Load the run folder {path.parent} "
            "to use the latest complete checkpoint instead."
        )
    latest = latest_checkpoint(path)
    if latest is None:
        incomplete = [p.name for p in list_checkpoints(path, complete_only=False)]
        raise FileNotFoundError(
            f"No complete {CHECKPOINT_PREFIX}<step> folder in {path}"
            + (f" (incomplete: {incomplete})" if incomplete else "")
            + "."
        )
    return latest


def prune_checkpoints(directory: PathLike, keep_last: Optional[int], protect=()) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints of ``directory``; return the deleted ones.

    ``keep_last=None`` keeps everything. Folders in ``protect`` (e.g. the last good
    checkpoint before a run of non-finite steps) are never deleted. Incomplete folders
    are left alone (a save may be running).
    """
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}.")
    keep = {Path(p).resolve() for p in protect if p is not None}
    found = list_checkpoints(directory)
    doomed = [p for p in found[: max(0, len(found) - keep_last)] if p.resolve() not in keep]
    for path in doomed:
        # Rename first so a kill mid-delete never leaves a half-deleted folder with a valid name.
        trash = path.with_name(f".{path.name}.deleting")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def remove_interrupted_saves(directory: PathLike) -> list[Path]:
    """Delete what killed saves left in ``directory``: hidden ``.checkpoint-<step>.incomplete`` and
    ``.deleting`` folders, and copies moved aside whose replacement completed. Returns what was removed.

    Call it only when no other process is saving into ``directory``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for child in directory.iterdir():
        name = child.name
        stale = name.startswith(f".{CHECKPOINT_PREFIX}") and name.endswith((".incomplete", ".deleting"))
        replaced = REPLACED_PATTERN.match(name)
        if replaced and is_complete(directory / f"{CHECKPOINT_PREFIX}{replaced.group(1)}"):
            stale = True
        if stale and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


# ---------------------------------------------------------------------- atomic writing
def temporary_path(final_path: PathLike) -> Path:
    """Where `atomic_directory` writes before the rename: a hidden sibling of ``final_path``.

    The name is fixed (not random) so that every process of a distributed run
    writes into the same folder, and a later save cleans up an interrupted one.
    """
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}.incomplete")


@contextlib.contextmanager
def atomic_directory(
    final_path: PathLike,
    *,
    overwrite: bool = True,
    marker: bool = True,
    marker_extra: Optional[dict] = None,
    fsync: bool = True,
    is_main_process: bool = True,
    barrier: Optional[Callable[[], None]] = None,
) -> Iterator[Path]:
    """Yield a temporary folder; on success it is marked complete and renamed to ``final_path``.

    On an exception the temporary folder is removed and the exception propagates;
    ``final_path`` is untouched. A kill leaves only the hidden temporary folder,
    which `latest_checkpoint` ignores and the next save of the same name removes.

    Args:
        final_path: where the folder must end up.
        overwrite: replace an existing ``final_path`` (False: raise FileExistsError).
        marker: write `COMPLETE_MARKER` (with ``marker_extra``) last, before the rename.
        marker_extra: JSON-serialisable fields stored in the marker.
        fsync: flush files and folders to disk before the rename (survives a power loss,
            not only a killed process).
        is_main_process, barrier: for several processes writing into one folder (as
            ``accelerator.save_state`` does): only the main process creates, marks and
            renames; ``barrier`` (e.g. ``accelerator.wait_for_everyone``) is called after
            creation, after the body and after the rename.
    """
    final_path = Path(final_path)
    tmp = temporary_path(final_path)
    wait = barrier or (lambda: None)
    if is_main_process:
        if final_path.exists() and not overwrite:
            raise FileExistsError(f"{final_path} exists; pass overwrite=True to replace it.")
        shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted save
        tmp.mkdir(parents=True)
    wait()
    try:
        yield tmp
        wait()
        if is_main_process:
            if marker:
                write_complete_marker(tmp, marker_extra, fsync=fsync)
            elif fsync:
                _fsync_tree(tmp)
            _swap_into_place(tmp, final_path, fsync=fsync)
    except BaseException:
        if is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    wait()


def _swap_into_place(tmp: Path, final_path: Path, fsync: bool) -> None:
    """Rename ``tmp`` to ``final_path``, replacing an existing folder (POSIX cannot rename over one)."""
    old = final_path.with_name(f".{final_path.name}.replaced")
    if final_path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_path, old)
    os.replace(tmp, final_path)
    if fsync:
        _fsync_dir(final_path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- transformers Trainer
def _make_callback_class():
    from transformers import TrainerCallback

    class MarkCheckpointCompleteCallback(TrainerCallback):
        """Marks each checkpoint of a transformers ``Trainer`` complete once it is fully saved.

        transformers writes ``checkpoint-<step>`` in place; ``on_save`` runs after the
        whole folder is written, so the marker tells `latest_checkpoint` the folder is
        whole (checked file by file), not just present.
        """

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
                if folder.is_dir():
                    write_complete_marker(folder, {"step": state.global_step})
            return control

    return MarkCheckpointCompleteCallback


_LAZY = {"MarkCheckpointCompleteCallback": _make_callback_class}


def __getattr__(name: str):
    # transformers is imported only when the callback is used, so this module stays light.
    if name in _LAZY:
        value = _LAZY[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "MarkCheckpointCompleteCallback",
    "atomic_directory",
    "checkpoint_step",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "remove_interrupted_saves",
    "resolve_checkpoint",
    "temporary_path",
    "write_complete_marker",
]
