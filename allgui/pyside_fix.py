"""A work-around for a reference-count bug of PySide6 (seen in 6.12.0 on CPython 3.11).

Every ``SignalInstance.emit()`` called from Python returns ``True`` without the reference it owes,
so each emit lowers ``True``'s reference count by one. Before Python 3.12 ``True`` is not immortal:
after enough emits (a few hundred in a bare interpreter, some thousands in the app) it is "freed"
and the interpreter aborts with "bool_dealloc: deallocating True or False", at a random moment of a
long session or at exit. Reproduce: ``for _ in range(1000): obj.some_signal.emit()``.

:func:`apply` measures the leak on a probe signal; where it is present, and only on CPython before
3.12, it gives ``True`` 2**40 extra references (its reference count is the object's first field),
which no session can use up. Elsewhere it changes nothing. Imported by :mod:`allgui.workers`, so
every part of the app that emits signals has it.
"""
from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

PAD = 1 << 40
_applied = False


def emit_leaks_true() -> bool:
    """Whether ``Signal.emit()`` lowers ``True``'s reference count (the bug is present)."""
    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(4):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    if lost > 0 and _fixable():
        _add_references(True, lost)      # give back what the probe took
    return lost > 0


def _fixable() -> bool:
    return sys.implementation.name == "cpython" and sys.version_info < (3, 12)


def _add_references(obj: object, n: int) -> None:
    ctypes.c_ssize_t.from_address(id(obj)).value += n


def apply() -> bool:
    """Pad ``True``'s reference count where emit() leaks it; True when the pad was applied."""
    global _applied
    if _applied:
        return True
    if _fixable() and emit_leaks_true():
        _add_references(True, PAD)
        _applied = True
    return _applied
