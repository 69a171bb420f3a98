"""Atomic file writes: a file is either the old one or the complete new one, never half written."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and would race with threads

#: Temporary files are named ``.<target name>.<pid>.<random>.allgui-tmp`` next to the target (the name
#: cut to TMP_NAME_BYTES), so a temporary left by a killed process (kill -9, power cut) is recognised
#: and removed by the next write of the same target.
TMP_SUFFIX = ".allgui-tmp"


#: most bytes of the target's name a temporary's name repeats: with the pid, mkstemp's random part and
#: TMP_SUFFIX it then fits the usual 255-byte limit even where the target's own name nearly fills it
TMP_NAME_BYTES = 200


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    while len(os.fsencode(name)) > TMP_NAME_BYTES:
        name = name[:-1]
    return name


def temporary_prefix(path: str | os.PathLike) -> str:
    """Prefix of the temporary files of a write to ``path`` by this process."""
    return f".{_stem(path)}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of writes to ``path`` whose process no longer runs; returns them."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{_stem(path)}.") + r"(\d+)\.[^/]*" + re.escape(TMP_SUFFIX) + "$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for e in entries:
        m = pattern.match(e.name)
        if m and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it over ``path``.

    The file gets ordinary permissions (0666 less the umask, not mkstemp's 0600). ``fsync``
    flushes it to disk before the rename (off for cheap, re-creatable files such as cache
    entries). On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
