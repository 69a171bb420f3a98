"""Start-up on a bare Linux desktop: missing libraries of Qt's xcb plugin are named, with the
install command, instead of Qt's bare abort."""
from __future__ import annotations

from allgui.platform_check import XCB_LIBRARIES, display_problem, missing_xcb_libraries

X11 = {"DISPLAY": ":0"}


def without(*names):
    return lambda lib: not any(n in lib for n in names)


def test_missing_libraries_are_named_with_the_install_command():
    text = display_problem(X11, "linux", loader=without("libxcb-cursor", "libxkbcommon-x11"))
    assert "libxcb-cursor.so.0  (package libxcb-cursor0)" in text
    assert "libxkbcommon-x11.so.0  (package libxkbcommon-x11-0)" in text
    assert "sudo apt-get install libxcb-cursor0 libxkbcommon-x11-0\n" in text
    assert "libxcb-icccm4" not in text


def test_nothing_to_say_when_everything_loads_or_another_plugin_is_used():
    everything = without()
    assert display_problem(X11, "linux", loader=everything) is None
    nothing = without("lib")
    assert len(missing_xcb_libraries(nothing)) == len(XCB_LIBRARIES)
    assert display_problem(dict(X11, QT_QPA_PLATFORM="offscreen"), "linux", loader=nothing) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", loader=nothing) is None
    assert display_problem(X11, "win32", loader=nothing) is None
    assert display_problem(X11, "darwin", loader=nothing) is None
    assert "libxcb-cursor0" in display_problem(dict(X11, QT_QPA_PLATFORM="xcb"), "linux", loader=nothing)
    assert "DISPLAY is not set" in display_problem({}, "linux", loader=everything)


def test_the_app_stops_with_the_message_and_a_non_zero_status(monkeypatch, capsys):
    from PySide6.QtWidgets import QApplication

    import allgui.__main__ as entry
    import allgui.platform_check as pc
    monkeypatch.setattr(QApplication, "instance", staticmethod(lambda: None))   # as at a real start
    monkeypatch.setattr(pc, "missing_xcb_libraries",
                        lambda loader=None: [(lib, pkg) for lib, pkg in XCB_LIBRARIES if "cursor" in lib])
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(pc.sys, "platform", "linux")
    assert entry.main(["--open", "nothing.png"]) == 1
    err = capsys.readouterr().err
    assert "sudo apt-get install libxcb-cursor0" in err and "xcb" in err
