"""Writing files safely: atomic writes and their temporary files, strict JSON, output checks.

Every writer of the package goes through :func:`atomic_path`: it writes to a temporary file in
the destination folder and renames it into place (``os.replace`` is atomic on POSIX and
Windows), so an interrupted run never leaves a half-written file under the final name. The
temporary names follow one pattern, ``.<stem>.<8 random chars>.tmp<suffix>`` (hidden,
:data:`TEMPORARY_NAME`): a run killed during a write leaves such a file behind,
:func:`clean_stale_temporaries` removes the old ones, and listings of inputs skip them.

A write that fails for a reason outside the program (folder not writable, a file where a folder
should be, disk full, read-only file system) raises :class:`WriteError`, one line naming the
path; :func:`check_writable_dir` and :func:`check_output_file` find those problems before a
long run starts. :func:`write_json` writes strict JSON only (no ``NaN``/``Infinity`` tokens).

This module sits at the floor of the import flow (it imports nothing of the package);
``darkfield_nb.io`` re-exports its names.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class WriteError(OSError, ValueError):
    """A file or folder could not be written; the message names the path and the reason.

    Both an ``OSError`` (what it is) and a ``ValueError`` (so front ends that report
    ``ValueError`` in one line report this too). ``errno`` is the underlying error number;
    ``str()`` is the message alone, without the ``[Errno N]`` prefix.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


#: Error numbers of a writer that mean the destination is full or read-only.
_FULL_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS") if hasattr(errno, name)
)


def _write_error(path: Path, exc: OSError) -> WriteError:
    """One-line :class:`WriteError` for a failed write of ``path``."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        why = f"permission denied: {path.parent} is not writable"
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "no space left on the device (disk or quota full)"
    elif code == errno.EROFS:
        why = "read-only file system"
    elif code == errno.EISDIR:
        why = "is a directory, expected a file name"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        why = f"{blocker} is a file, not a folder"
    else:
        why = exc.strerror or str(exc)
    return WriteError(code or errno.EIO, f"{path}: cannot write: {why}")


def temporary_beside(path: str | os.PathLike) -> Path:
    """Create an empty temporary file ``.<stem>.<8 random chars>.tmp<suffix>`` beside ``path``
    (making the folder), with the permissions the umask gives, and return its path; the caller
    renames it into place or removes it (:func:`atomic_path` does both).

    Raises:
        WriteError: naming ``path`` when the folder cannot be made or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    except OSError as exc:
        raise _write_error(path, exc) from exc
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Use it for writers that want a file name (``np.save``, ``torch.save``, ``tifffile``)::

        with atomic_path("out/x.npy") as tmp:
            np.save(tmp, array)

    The temporary file is ``.<stem>.<8 random chars>.tmp<suffix>`` in the destination folder
    (:func:`is_temporary` recognizes the pattern). On an exception it is removed and ``path``
    is left untouched.

    Raises:
        WriteError: naming ``path`` when the folder cannot be made or written, ``path`` is a
            directory, or the disk is full (errno ENOSPC/EDQUOT/EFBIG/EROFS raised by the
            writer); other exceptions of the writer pass through unchanged.
    """
    path = Path(path)
    tmp_path = temporary_beside(path)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if isinstance(exc, WriteError) or exc.errno not in _FULL_ERRNOS:
                raise
            raise _write_error(path, exc) from exc
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise _write_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_ready(value, where: str, bad: list[str]):
    """A copy of ``value`` that ``json`` can encode; non-finite floats noted in ``bad``."""
    if isinstance(value, dict):
        return {
            str(k): _json_ready(v, f"{where}.{k}" if where else str(k), bad)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist(), where, bad)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(f"{where or '(top level)'} = {value}")
    return value


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON (RFC 8259) to ``path`` atomically, ending in a newline.

    NumPy scalars and arrays become numbers and lists, paths become strings. Strict JSON has
    no ``NaN`` or ``Infinity``, so a non-finite float anywhere is refused rather than written
    as a token that strict parsers reject.

    Raises:
        ValueError: naming the file and every non-finite value by its key path
            (``stages[0].mse = nan``); nothing is written.
        TypeError: naming the file, for a value JSON cannot encode.
        WriteError: the file cannot be written (see :func:`atomic_path`).
    """
    path = Path(path)
    bad: list[str] = []
    ready = _json_ready(obj, "", bad)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"{path}: refusing to write {len(bad)} non-finite value(s) as JSON ({shown}); "
            "strict JSON has no NaN or Infinity"
        )
    try:
        text = json.dumps(ready, indent=indent, allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"{path}: cannot write as JSON ({exc})") from exc
    if path.is_dir():
        raise WriteError(
            errno.EISDIR, f"{path}: cannot write: is a directory, expected a file name"
        )
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------
# Output folders: check before a long run
# --------------------------------------------------------------------------------------------


def check_writable_dir(
    folder: str | os.PathLike, *, min_free_bytes: int = 0, create: bool = True
) -> Path:
    """Make sure files can be written in ``folder`` now, before a long run needs it.

    Creates the folder (and its parents) when ``create``, then creates and removes a probe file
    with the temporary-name pattern of :func:`atomic_path` (a real write, so it also catches
    read-only mounts and ACLs that ``os.access`` misses, and works as root). With
    ``min_free_bytes`` it also checks the free space (``shutil.disk_usage``).

    Returns:
        ``Path(folder)``.

    Raises:
        WriteError: one line naming the folder: it is a file, a parent is a file, it does not
            exist (``create=False``), permission denied, read-only, or too little free space.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(errno.ENOTDIR, f"{folder}: cannot write: is a file, expected a folder")
    probe = folder / ".write-probe"
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise WriteError(errno.ENOENT, f"{folder}: cannot write: folder does not exist")
        fd, name = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(name)
    except WriteError:
        raise
    except OSError as exc:
        err = _write_error(probe, exc)
        raise WriteError(err.errno, str(err).replace(f"{probe}: ", f"{folder}: ", 1)) from exc
    if min_free_bytes:
        free = shutil.disk_usage(folder).free
        if free < min_free_bytes:
            raise WriteError(
                errno.ENOSPC,
                f"{folder}: cannot write: only {free / 1e6:.1f} MB free, "
                f"need at least {min_free_bytes / 1e6:.1f} MB",
            )
    return folder


def check_output_file(path: str | os.PathLike, *, min_free_bytes: int = 0) -> Path:
    """Make sure ``path`` can be written as a file (e.g. a ``--json`` target) before the work.

    Refuses a path that is an existing directory, then checks its folder with
    :func:`check_writable_dir` (creating it). An existing file is fine: it will be replaced.

    Raises:
        WriteError: one line naming ``path`` or its folder and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(
            errno.EISDIR,
            f"{path}: cannot write: is a directory, expected a file name "
            f"(e.g. {path / 'results.json'})",
        )
    check_writable_dir(path.parent, min_free_bytes=min_free_bytes)
    return path


# --------------------------------------------------------------------------------------------
# Temporary files of our own naming
# --------------------------------------------------------------------------------------------

#: The names :func:`atomic_path` and :func:`check_writable_dir` give their temporary files:
#: ``.<stem>.<8 chars of tempfile's alphabet>.tmp<suffix>`` (suffix optional).
TEMPORARY_NAME = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^./\\]+)?$")
#: Default age after which a temporary file counts as left over by a killed run (seconds). A
#: write in progress keeps touching its file, so its modification time stays recent.
STALE_AFTER_S = 600.0


def is_temporary(path: str | os.PathLike) -> bool:
    """True when the file name follows our temporary-name pattern (:data:`TEMPORARY_NAME`)."""
    return TEMPORARY_NAME.match(Path(path).name) is not None


def stale_temporaries(
    folder: str | os.PathLike, *, max_age_s: float = STALE_AFTER_S, recursive: bool = True
) -> list[Path]:
    """Our temporary files under ``folder`` last modified at least ``max_age_s`` seconds ago.

    ``max_age_s=0`` lists every one. Only names matching :data:`TEMPORARY_NAME` are listed
    (never a user's ``.hidden`` or ``notes.tmp``); symbolic links are not followed. A missing
    folder gives an empty list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    found: list[Path] = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for here, _, names in walk:
        for name in names:
            if not TEMPORARY_NAME.match(name):
                continue
            p = Path(here) / name
            try:
                st = p.lstat()
            except OSError:
                continue  # removed meanwhile
            if p.is_file() and not p.is_symlink() and now - st.st_mtime >= max_age_s:
                found.append(p)
    return sorted(found)


def clean_stale_temporaries(
    folder: str | os.PathLike, *, max_age_s: float = STALE_AFTER_S, recursive: bool = True
) -> list[Path]:
    """Remove the temporary files a killed run left under ``folder``; return the removed ones.

    What is removed is exactly :func:`stale_temporaries` (same arguments): files named like
    :data:`TEMPORARY_NAME` and older than ``max_age_s`` (0: all of them; use that only when no
    other process writes into ``folder``). A file that cannot be removed gives a
    ``UserWarning`` naming it.
    """
    removed = []
    for p in stale_temporaries(folder, max_age_s=max_age_s, recursive=recursive):
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            warnings.warn(
                f"{p}: stale temporary file not removed ({exc.strerror})", UserWarning, stacklevel=2
            )
            continue
        removed.append(p)
    return removed
