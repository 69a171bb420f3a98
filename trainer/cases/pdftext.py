r"""Text on the case report's pages: drawn literally whatever a case holds, decisions in words and colours.

Every text of the report goes through :func:`put`: names, comments and metadata come from a case
file and may hold anything. Control and format characters (ESC, BEL, CR, a byte-order mark, bidi
overrides, zero-width joiners), unassigned or private code points and characters the report's font
lacks are shown as backslash escapes (``\x1b``, ``\ufeff``); line breaks and tabs become spaces; a
``$`` is a dollar sign (no mathtext). Very long text is cut with an ellipsis.

:func:`decision_style` is the one place that turns a decision into its words and colour on the page.
"""
from __future__ import annotations

import functools
import unicodedata

from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font

from trainer.cases.schema import REVIEW_UNCLASSIFIABLE
from trainer.cases.summary import when

RESEARCH_ONLY = "Research use only \u2014 not for clinical diagnosis."
PAGE_SIZE = (8.27, 11.69)          # A4 portrait, inches
#: the longest text drawn in one place (characters)
MAX_TEXT = 400

#: outline / text colours (RGB 0..1), as the app draws them
COLOURS = {"ALL blast": (0.84, 0.10, 0.11), "normal": (0.13, 0.44, 0.71), "uncertain, review": (0.90, 0.55, 0.0),
           "not assessable": (0.43, 0.43, 0.43), "outside training": (0.45, 0.40, 0.55), None: (0.30, 0.30, 0.30),
           REVIEW_UNCLASSIFIABLE: (0.43, 0.43, 0.43)}
OVERRIDE_COLOUR = (0.45, 0.10, 0.55)
GREY = (0.35, 0.35, 0.35)

_ESCAPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@functools.lru_cache(maxsize=1)
def _covered() -> frozenset[int]:
    """Code points every style of the report's font draws (regular, bold, italic, bold italic)."""
    sets = []
    for weight in ("normal", "bold"):
        for style in ("normal", "italic"):
            path = findfont(FontProperties(family="sans-serif", weight=weight, style=style))
            sets.append(set(FT2Font(path).get_charmap()))
    return frozenset(set.intersection(*sets))


def literal(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as it can be drawn literally (see the module)."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "\u2026"
    if s.isascii() and s.isprintable():
        return s
    covered = _covered()
    out = []
    for ch in s:
        o = ord(ch)
        if ch in "\n\r\t":
            out.append(" ")
        elif unicodedata.category(ch) in _ESCAPED or (o > 0x7E and o not in covered):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def put(fig, x: float, y: float, text: object, limit: int = MAX_TEXT, **kw):
    """``fig.text`` of ``text`` drawn literally (escaped, no mathtext)."""
    return fig.text(x, y, literal(text, limit), parse_math=False, **kw)


def decision_style(decision: str | None) -> tuple[str, tuple[float, float, float]]:
    """A model's decision as the report writes it: (words, colour)."""
    words = decision or "no result"
    return words, COLOURS.get(decision, COLOURS[None])


def status_text(signoff) -> str:
    """The case's status: ``Preliminary — not signed`` or ``Final``."""
    return "Preliminary \u2014 not signed" if signoff is None else "Final"


def signed_text(signoff, n_addenda: int = 0) -> str:
    """Who signed and when, in the signer's local time with its UTC offset (and the addenda since)."""
    text = f"Signed by {signoff.author} on {when(signoff.local_at, convert=False)}"
    if n_addenda:
        text += f"; {n_addenda} addend{'um' if n_addenda == 1 else 'a'} since, listed below"
    return text


def short_status(signoff, n_addenda: int = 0) -> str:
    """The status as every page's footer gives it."""
    if signoff is None:
        return "Preliminary \u2014 not signed"
    return "Final, with addenda" if n_addenda else "Final"
