"""CSV cells that are safe to open in a spreadsheet and to encode as UTF-8.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a formula by
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` in a file name is enough). Such text cells
get a leading single quote, which spreadsheets show as text. File names that are not valid UTF-8
(bytes decoded by Python with ``surrogateescape``) are written with backslash escapes instead of
failing the whole file. Numbers are left as they are.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

#: First characters that make a spreadsheet evaluate a cell.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """``text`` with undecodable bytes of a file name (lone surrogates) as backslash escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace") if _fs_roundtrip(text) \
            else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fs_roundtrip(text: str) -> bool:
    try:
        os.fsencode(text)
        return True
    except UnicodeEncodeError:
        return False


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with a formula character gets a leading ``'``.

    Undecodable file-name bytes become backslash escapes; other values unchanged.
    """
    if not isinstance(value, str):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
            if isinstance(value, bytes):
                value = os.fsdecode(value)
        else:
            return value
    value = printable(value)
    if value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    """:func:`safe_cell` applied to every cell of a row (for ``csv.writer``)."""
    return [safe_cell(v) for v in values]


def safe_dict(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`safe_cell` applied to every value of a row (for ``csv.DictWriter``)."""
    return {k: safe_cell(v) for k, v in row.items()}
