"""Pieces every subcommand shares: argument types, output-path checks, the progress bar and signal handling."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from trainer.util.csvsafe import printable
from trainer.util.errors import AllguiError


class UsageError(AllguiError):
    """An argument or output path that cannot work, found before any work is done."""


def int_range(lo: int, hi: int | None = None):
    """An argparse type: a whole number from ``lo`` to ``hi`` (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if hi is not None and not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, not {v}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {v}")
        return v
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)


def switch(group, flag: str, default: bool, help: str) -> None:
    """An ``on|off`` option whose default comes from the config."""
    group.add_argument(flag, choices=("on", "off"), default="on" if default else "off",
                       help=f"{help} (default: %(default)s)")


def probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_folder(folder: Path, what: str) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UsageError(f"{what}: {printable(str(base))} is a file, not a folder.")
    try:  # a real probe: permissions, read-only mounts and special file systems all show here
        fd, probe = tempfile.mkstemp(prefix=".allgui-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {printable(str(base))} "
                         f"({exc.strerror or 'permission denied or read-only'}).") from None


def _existing_folder(folder: Path, what: str) -> None:
    """Refuse a folder that does not exist: a mistyped path is told, never created."""
    if folder.is_dir():
        return
    if folder.exists() or _nearest_existing(folder).is_file():
        raise UsageError(f"{what}: {printable(str(_nearest_existing(folder)))} is a file, not a folder.")
    raise UsageError(f"{what}: there is no folder {printable(str(folder))}; create it first.")


def _name_fits(p: Path, folder: Path, what: str) -> None:
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    n = len(os.fsencode(p.name))
    if n > limit:
        raise UsageError(f"{what}: the file name is {n} bytes long; at most {limit} fit in {printable(str(folder))}.")


def check_output_file(path: str, what: str) -> None:
    """Refuse, before any work, an output file that is a folder or lies where nothing can be written.

    Its folder must exist: a mistyped path is told, never created.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise UsageError(f"{what} {printable(path)} is an existing folder; give a file name.")
        if p.exists() and not p.is_file():
            raise UsageError(f"{what} {printable(path)} is not a regular file.")
        folder = p.parent if str(p.parent) else Path(".")
        _existing_folder(folder, what)
        _writable_folder(folder, what)
        _name_fits(p, folder, what)
    except OSError as exc:  # a path longer than the system takes, say
        raise UsageError(f"{what} {printable(path)}: {exc.strerror or exc}.") from None


def check_output_dir(path: str, what: str, parents: bool = False) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created/written.

    The folder itself is created when missing, but not its parent (a mistyped path is told) unless
    ``parents`` (a default under the user's cache folder, say).
    """
    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise UsageError(f"{what} {printable(path)} is a file; give a folder.")
        if not parents and not p.exists():
            _existing_folder(Path(os.path.abspath(p)).parent, what)
            _name_fits(p, Path(os.path.abspath(p)).parent, what)
        _writable_folder(p, what)
    except OSError as exc:
        raise UsageError(f"{what} {printable(path)}: {exc.strerror or exc}.") from None


def check_names(text: str | None, allowed: tuple[str, ...], what: str) -> None:
    names = csv_list(text) or []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise UsageError(f"Unknown {what}: {', '.join(unknown)}; choose from {', '.join(allowed)}.")
    if text is not None and not names:
        raise UsageError(f"No {what} given; choose from {', '.join(allowed)}.")


def csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


class ProgressBar:
    """tqdm bar fed by (fraction, message) callbacks; silent when ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self._last = float("-inf")
        if not quiet:
            from tqdm import tqdm  # only when a bar is shown
            self.bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {desc}",
                            file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.2:  # keep logs and slow terminals readable
            return
        self._last = now
        self.bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self.bar.set_description_str(message[:70], refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


#: a signal repeated within this many seconds of the first is ignored, so an impatient second Ctrl-C does
#: not cut short the wind-down that keeps the finished work; a later one stops at once
REPEAT_GRACE_S = 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop:
    """Ctrl-C / SIGTERM as the command saw them.

    The handler raises KeyboardInterrupt (the first signal; see REPEAT_GRACE_S) and remembers the request,
    so a loop that checks :func:`stop_requested` stops even where some library code swallowed the
    KeyboardInterrupt (an exception raised in a ``finally`` replaces it).
    """

    def __init__(self) -> None:
        self.at: float | None = None  # time of the first signal
        self.held = False

    def __call__(self, signum, frame) -> None:
        now = time.monotonic()
        first = self.at is None
        if first:
            self.at = now
        if self.held or (not first and now - self.at < REPEAT_GRACE_S):
            return
        raise KeyboardInterrupt(f"signal {signum}")


_stop = _Stop()


def stop_requested() -> bool:
    """True once Ctrl-C or SIGTERM arrived inside :func:`sigterm_interrupts`."""
    return _stop.at is not None


def raise_if_stopped() -> None:
    """KeyboardInterrupt when a stop was asked for (whatever became of the signal's own exception)."""
    if stop_requested():
        raise KeyboardInterrupt("stop requested")


def hold_signals() -> None:
    """From now until :func:`sigterm_interrupts` ends, a signal is only remembered.

    For work that is done and being saved: a rename must not be cut off after the last row.
    """
    _stop.held = True


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM is handled like Ctrl-C (temporary files removed, completed work kept and reported).

    Both raise KeyboardInterrupt in the main thread and are remembered (:func:`stop_requested`). Ctrl-C
    stays ignored where the shell made it so (a command started in the background). Re-entrant.
    """
    try:
        old = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        outer = all(h is not _stop for h in old.values())
        for s, h in old.items():
            if h is not signal.SIG_IGN:
                signal.signal(s, _stop)
    except (ValueError, OSError):  # not the main thread
        yield
        return
    if outer:
        _stop.at, _stop.held = None, False
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if outer:
            _stop.at, _stop.held = None, False
