"""Atomic writes: an output appears under its final name complete, or not at all.

A file is written under a temporary name beside its target, fsynced, then hard-linked (or, with force, renamed)
into place; a folder is built under a temporary name and renamed. A failure or an interrupt removes the
temporary, so nothing partial is ever left under the final name, and nothing is replaced unless forced.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputExists, SanaError


def exists_error(path: Path) -> SanaError:
    return OutputExists(f"{path} exists; use --force to overwrite or choose another -o")


@contextmanager
def atomic_file(path: Path, *, force: bool) -> Iterator[Path]:
    """Yield a new empty file beside `path` to write; it becomes `path` when the block ends without error."""
    path = Path(path)
    if path.is_dir():
        raise SanaError(f"{path} is a directory", "end -o with / to write into it")
    if path.exists() and not force:
        raise exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp_beside(path)
    try:
        yield temp
        fsync_file(temp)
        _move_into_place(temp, path, force)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextmanager
def atomic_directory(path: Path, *, force: bool) -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill; it becomes `path` when the block ends without error.

    The writer fsyncs the files it puts there. With force, an existing `path` is moved aside first and deleted
    once the new folder is in place.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp_beside(path, directory=True)
    old: Path | None = None
    try:
        yield temp
        fsync_directory(temp)
        if force and (path.exists() or path.is_symlink()):
            old = _unused_name_beside(path)
            os.rename(path, old)
        try:
            # rename (unlike a hard link) would replace an empty folder that appeared meanwhile; nothing is lost.
            os.rename(temp, path)
        except OSError:
            if old is None and path.exists():
                raise exists_error(path) from None
            if old is not None:
                os.rename(old, path)
                old = None
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            _remove(old)
    fsync_directory(path.parent)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; not every platform can open a directory, which is harmless to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp_beside(path: Path, *, directory: bool = False) -> Path:
    # os.open / os.mkdir honour the umask, unlike mkstemp's 0600, so the output gets ordinary permissions.
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if directory:
                os.mkdir(temp, 0o777)
            else:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue


def _unused_name_beside(path: Path) -> Path:
    while True:
        name = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
        if not (name.exists() or name.is_symlink()):
            return name


def _move_into_place(temp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(temp, path)
        return
    # A hard link fails if path appeared since the check above; os.replace would silently clobber it.
    try:
        os.link(temp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:  # file systems without hard links
        if path.exists():
            raise exists_error(path) from None
        os.replace(temp, path)
        return
    temp.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
