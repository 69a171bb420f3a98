"""Start the app: ``allgui`` or ``python -m allgui``.

  allgui [--model BUNDLE] [--open PATH ...] [--case CASE.sqlite] [--heatmap [BACKBONE]]
         [--screenshot FILE.png [--wait-all]]

Without options it loads the bundled default model and opens the bundled sample images.
``--screenshot`` renders the window once the first result is on screen, saves it and exits (status 1
if no result came within ``--timeout`` seconds); with ``--heatmap`` it also waits for the heatmap.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allgui.platform_check import display_problem
from trainer.config import BACKBONE_NAMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allgui", description="ALL blast detection in blood-smear images "
                                "(research use only, not for clinical diagnosis).")
    p.add_argument("--model", help="model bundle (.allmodel) to load; default: the bundled model")
    p.add_argument("--open", nargs="+", metavar="PATH", help="image files or folders to open")
    p.add_argument("--screenshot", metavar="FILE", help="save a picture of the window once results are "
                   "shown, then exit")
    p.add_argument("--heatmap", nargs="?", const="densenet121", choices=BACKBONE_NAMES,
                   help="show the heatmap of where this network looked (default: densenet121)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for results with --screenshot")
    p.add_argument("--wait-all", action="store_true", help="with --screenshot: wait until every open image is "
                   "analysed (default: the first result)")
    p.add_argument("--case", metavar="FILE", help="case file (review database) to open, with its images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Qt and the window load after the arguments are read: --help answers at once
    from PySide6.QtCore import QCoreApplication, QTimer
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        problem = display_problem()     # instead of Qt's bare abort when its xcb plugin cannot load
        if problem:
            print(problem, file=sys.stderr)
            return 1
    QCoreApplication.setOrganizationName("allgui")
    QCoreApplication.setApplicationName("allgui")
    app = QApplication.instance() or QApplication(sys.argv[:1])

    # the window's modules after the QApplication exists
    from allgui.resources import samples_dir
    from allgui.window.main_window import MainWindow

    win = MainWindow(model=args.model, load_now=False)
    if args.heatmap:
        win.state.set_heatmap(visible=True, backbone=args.heatmap)
    if args.screenshot:
        win.resize(1440, 900)
    win.show()
    win.repaint()              # the window paints now, before the model's imports occupy the interpreter
    targets = args.open or ([] if args.case else [str(samples_dir())] if samples_dir().is_dir() else [])
    dirs = [t for t in targets if Path(t).is_dir()]
    files = [t for t in targets if not Path(t).is_dir()]
    if dirs:
        win.files.open_folder(dirs[0])
    if files:
        win.files.open_files(files)
    if args.case:
        win.cases.open_case(args.case)
    # after the images: a model loading for images waiting rebuilds only what they need and skips the warm-up
    win.load_initial_model()

    if args.screenshot:
        out = args.screenshot

        def shoot(code: int = 0) -> None:
            win.grab().save(out)
            print(out)
            if code:
                print(f"allgui: no result within {args.timeout:.0f} s; saved the window as it was",
                      file=sys.stderr)
            app.exit(code)

        def heatmap_ready() -> bool:
            st = win.state
            target = st.heatmap_target
            return (not args.heatmap or st.prediction is None or target is None or target in st.explanations
                    or target in st.explanation_errors)

        def ready() -> None:
            shown = win.state.current and (win.state.prediction is not None or win.state.current in win.state.errors
                                           or win.analysis.predictor is None and not win.analysis.loading)
            if shown and heatmap_ready() and not (args.wait_all and win.analysis.predictor is not None
                                                  and win.state.pending()):
                QTimer.singleShot(400, shoot)
            else:
                QTimer.singleShot(100, ready)

        QTimer.singleShot(300, ready)
        QTimer.singleShot(int(args.timeout * 1000), lambda: shoot(1))  # exit status 1: timed out
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
