"""Before Qt starts on Linux: whether its X11 (xcb) platform plugin can load.

Qt's xcb plugin needs a dozen system libraries that a bare desktop install may lack (most often
``libxcb-cursor0``). Without them Qt prints "Could not load the Qt platform plugin xcb" and aborts.
:func:`display_problem` finds the missing ones first and says which packages to install. Free of
Qt: it must run before Qt is loaded.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping

#: (shared library, Debian/Ubuntu package) that Qt's xcb platform plugin links against
XCB_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("libxcb-cursor.so.0", "libxcb-cursor0"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libxkbcommon.so.0", "libxkbcommon0"),
    ("libxcb-icccm.so.4", "libxcb-icccm4"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1"),
    ("libxcb-image.so.0", "libxcb-image0"),
    ("libxcb-render-util.so.0", "libxcb-render-util0"),
    ("libxcb-util.so.1", "libxcb-util1"),
    ("libxcb-randr.so.0", "libxcb-randr0"),
    ("libxcb-shape.so.0", "libxcb-shape0"),
    ("libxcb-xfixes.so.0", "libxcb-xfixes0"),
    ("libxcb-xkb.so.1", "libxcb-xkb1"),
    ("libxcb-shm.so.0", "libxcb-shm0"),
    ("libxcb-sync.so.1", "libxcb-sync1"),
    ("libxcb-render.so.0", "libxcb-render0"),
    ("libxcb.so.1", "libxcb1"),
    ("libX11-xcb.so.1", "libx11-xcb1"),
    ("libEGL.so.1", "libegl1"),
    ("libGL.so.1", "libgl1"),
    ("libfontconfig.so.1", "libfontconfig1"),
    ("libdbus-1.so.3", "libdbus-1-3"),
)


def can_load(library: str) -> bool:
    """Whether the dynamic linker can load ``library`` (by its exact file name)."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def missing_xcb_libraries(loader: Callable[[str], bool] = can_load) -> list[tuple[str, str]]:
    """The (library, package) pairs of :data:`XCB_LIBRARIES` that cannot be loaded."""
    return [(lib, pkg) for lib, pkg in XCB_LIBRARIES if not loader(lib)]


def display_problem(environ: Mapping[str, str] | None = None, platform: str | None = None,
                    loader: Callable[[str], bool] = can_load) -> str | None:
    """A message saying why Qt's xcb plugin would not start here, or None when it should.

    Also None when another platform plugin is used: ``QT_QPA_PLATFORM`` set to something else, or a
    Wayland session.
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux"):
        return None
    chosen = env.get("QT_QPA_PLATFORM", "")
    if chosen and not chosen.startswith("xcb"):
        return None
    if not chosen and env.get("WAYLAND_DISPLAY"):
        return None
    missing = missing_xcb_libraries(loader)
    if missing:
        packages = " ".join(pkg for _, pkg in missing)
        return ("allgui cannot open its window: Qt's X11 (xcb) platform plugin needs system libraries that "
                "are not installed:\n" + "".join(f"  {lib}  (package {pkg})\n" for lib, pkg in missing)
                + f"Install them (Debian/Ubuntu):\n  sudo apt-get install {packages}\n"
                "or run without a window: QT_QPA_PLATFORM=offscreen allgui --screenshot FILE.png")
    if not env.get("DISPLAY"):
        return ("allgui cannot open its window: no display (DISPLAY is not set). Start it from a desktop "
                "session, or without a window: QT_QPA_PLATFORM=offscreen allgui --screenshot FILE.png "
                "(or under xvfb-run).")
    return None
