"""GUI latency benchmark for allgui.

Measures, in a real window (offscreen by default; run under an X server for on-screen numbers):
  open      median time from opening a 450x450 crop to its result painted
  forward   one batch-of-one forward pass of the two networks, in the loaded model's precision, as the
            app runs it (side by side on the CPU, ``Predictor.warm_up``): the baseline of ``open``
            (goal: open <= 1.3x forward); also one network after the other, for comparison
  slider    median time from a threshold-slider move to the repainted window (goal < 16 ms)
  stall     longest event-loop stall while a retrain runs in the background (goal < 100 ms)
  startup   (``--startup K``) ``allgui --open CROP`` in a fresh process, median of K runs after one
            warm-up: process start -> window painted (goal <= 2 s) and -> first result painted; with
            ``--baseline`` another checkout starts in turn with this one (per-round ratio and difference)

  python benchmarks/gui_latency.py [--model BUNDLE] [--image CROP.png] [--repeats 15] [--startup 3]
         [--startup-only] [--baseline OLD_CHECKOUT --baseline-model OLD.allmodel]

Without --model the bundled default model is used; if there is none, a model with the same
architecture (two backbones, 224 px input, random weights: same cost as ImageNet weights) is
trained on generated data first. The retrain for the stall measure uses generated data too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _tiny_data(root: Path, size: int = 64, n: int = 12) -> Path:
    from trainer.io.synthetic import write_dataset

    return write_dataset(root, layout="cnmc", n_per_class=n, size=size, seed=0, n_subjects=6)


def _make_model(tmp: Path, image_size: int) -> str:
    from trainer.config import TrainConfig
    from trainer.training.pipeline import train

    data = _tiny_data(tmp / "model_data", size=96)
    cfg = TrainConfig(data=str(data), image_size=image_size, weights="none", num_workers=0, batch_size=16,
                      output=str(tmp / "bench.allmodel"))
    return str(train(cfg).bundle_path)


#: run in a fresh process by ``startup``: the real ``allgui`` entry point, with an application-wide event
#: filter that notes the first paint of the main window and the first paint showing a result
_STARTUP_CHILD = r"""
import json, sys, time
spawned = float(sys.argv[1])
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
marks = {}

class Watch(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Paint and obj.isWidgetType() and obj.window().inherits("QMainWindow"):
            now = time.time() - spawned
            marks.setdefault("window_painted_s", now)
            state = getattr(obj.window(), "state", None)
            if state is not None and state.prediction is not None and "first_result_painted_s" not in marks:
                marks["first_result_painted_s"] = now
                QTimer.singleShot(0, lambda: app.exit(0))
        return False

watch = Watch()
app.installEventFilter(watch)
QTimer.singleShot(120_000, lambda: app.exit(1))
from allgui.__main__ import main
code = main(["--model", sys.argv[2], "--open", sys.argv[3]])
print(json.dumps(marks))
sys.exit(code)
"""


def startup_times(model: str, image: str, runs: int, baseline: str | None = None,
                  baseline_model: str | None = None) -> dict[str, float]:
    """Medians over ``runs`` fresh processes (after one warm-up) of window painted and first result painted.

    With ``baseline`` (another checkout's folder) and its ``baseline_model``, that code starts in turn with
    this one in every round; ``startup_first_result_ratio_to_baseline`` and ``..._minus_baseline_s`` are
    medians of the per-round ratios and differences (a host whose speed drifts slows both alike).
    """
    import subprocess

    codes = {"": (ROOT, model)}
    if baseline:
        codes["baseline_"] = (Path(baseline).resolve(), baseline_model or model)
    marks: dict[str, list[dict]] = {k: [] for k in codes}
    for i in range(runs + 1):
        for name, (code, bundle) in codes.items():
            env = dict(os.environ, PYTHONPATH=str(code))
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte code cached
            spawned = time.time()
            run = subprocess.run([sys.executable, "-c", _STARTUP_CHILD, repr(spawned), str(bundle), image],
                                 capture_output=True, text=True, env=env, cwd=code, timeout=180)
            if run.returncode != 0:
                raise SystemExit(f"allgui did not start: {run.stderr[-2000:]}")
            if i:
                marks[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    out = {f"startup_{name}{k}_median": round(statistics.median(m[k] for m in ms), 2)
           for name, ms in marks.items() for k in ms[0]}
    if baseline:
        pairs = list(zip(marks[""], marks["baseline_"]))
        key = "first_result_painted_s"
        out["startup_first_result_ratio_to_baseline"] = round(statistics.median(a[key] / b[key] for a, b in pairs), 2)
        out["startup_first_result_minus_baseline_s"] = round(statistics.median(a[key] - b[key] for a, b in pairs), 2)
    return out


def _default_image() -> str:
    samples = sorted((ROOT / "resources" / "samples").glob("*_all.png"))
    if samples:
        return str(samples[0])
    raise SystemExit("no sample crop found; pass --image")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--image")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--slider-moves", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=224, help="input size of the stand-in model")
    ap.add_argument("--no-retrain", action="store_true")
    ap.add_argument("--startup", type=int, default=0, metavar="K", help="measure start-up over K fresh runs")
    ap.add_argument("--startup-only", action="store_true", help="with --startup: only the start-up measure")
    ap.add_argument("--baseline", help="with --startup: another checkout, started in turn with this one")
    ap.add_argument("--baseline-model", help="the bundle the baseline loads (default: --model)")
    args = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if args.startup and args.startup_only:
        from allgui.resources import default_model_path
        out = startup_times(args.model or str(default_model_path()), args.image or _default_image(), args.startup,
                            args.baseline, args.baseline_model)
        print(json.dumps(out, indent=2))
        return out

    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance() or QApplication([])
    from allgui.resources import default_model_path
    from allgui.window.main_window import MainWindow
    from benchmarks.predict_throughput import one_forward
    from trainer.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="allgui_bench_"))
    out: dict = {"platform": app.platformName(), "cpus": os.cpu_count()}
    try:
        model = args.model or (str(default_model_path()) if default_model_path().exists() else None)
        if model is None:
            t0 = time.perf_counter()
            model = _make_model(tmp, args.image_size)
            out["stand_in_model_train_s"] = round(time.perf_counter() - t0, 1)
        out["model"] = Path(model).name
        image = args.image or _default_image()
        settings = QSettings(str(tmp / "settings.ini"), QSettings.IniFormat)
        win = MainWindow(model=model, settings=settings, models_dir=tmp / "models",
                         retrain_defaults=TrainConfig(image_size=64, weights="none", num_workers=0,
                                                      batch_size=16))
        win.resize(1440, 900)
        win.show()
        _wait(app, lambda: win.analysis.predictor is not None, 120)

        # open -> result painted
        shown: dict[str, float] = {}
        win.predictionShown.connect(lambda p: shown.setdefault(p, time.perf_counter()))
        times = []
        for i in range(args.repeats + 1):
            p = tmp / f"crop_{i:03d}{Path(image).suffix}"
            shutil.copyfile(image, p)
            t0 = time.perf_counter()
            win.files.open_files([str(p)])
            _wait(app, lambda p=p: str(p) in shown or str(p) in win.state.errors, 60)
            win.repaint()                       # paint the result synchronously
            t1 = time.perf_counter()
            if i:                               # the first run warms up the networks
                times.append(t1 - t0)
        out["open_to_result_ms_median"] = round(1000 * statistics.median(times), 1)
        out["open_to_result_ms_min"] = round(1000 * min(times), 1)
        out["predict_ms_median"] = round(1000 * statistics.median(
            win.state.predictions[p].seconds for p in win.state.predictions), 1)
        # baseline: one batch-of-one pass through the two networks, in the precision the window predicts in
        pred = win.analysis.predictor
        out["precision"] = pred.precision
        out["one_forward_ms_median"] = round(1000 * one_forward(pred, args.repeats), 1)
        out["one_forward_one_after_the_other_ms_median"] = round(
            1000 * one_forward(pred, args.repeats, side_by_side=False), 1)
        out["open_ratio_to_one_forward"] = round(out["open_to_result_ms_median"] / out["one_forward_ms_median"], 2)

        # slider -> repaint: (a) the updates Qt schedules, (b) forcing the whole window to repaint
        win.files.open_folder(str(Path(image).parent))
        _wait(app, lambda: not win.state.pending(), 300)
        out["table_rows"] = len(win.state.paths)
        for key, paint in (("slider_to_repaint", app.processEvents), ("slider_full_window_repaint", win.repaint)):
            moves = []
            for k in range(args.slider_moves):
                v = 200 + (k * 37) % 600
                t0 = time.perf_counter()
                win.side.slider.setValue(v)
                paint()
                moves.append(time.perf_counter() - t0)
            out[f"{key}_ms_median"] = round(1000 * statistics.median(moves), 2)
            out[f"{key}_ms_max"] = round(1000 * max(moves), 2)

        # event-loop stall during a retrain (child process)
        if not args.no_retrain:
            data = _tiny_data(tmp / "retrain_data")
            QMessageBox.question = staticmethod(lambda *a, **k: QMessageBox.No)
            QMessageBox.critical = staticmethod(lambda *a, **k: print("retrain failed:", a[2]) or QMessageBox.Ok)
            dlg = win.models.show_retrain()
            dlg.data.setText(str(data))
            dlg.weights.setCurrentText("none")
            dlg.device.setCurrentText("cpu")
            ticks: list[float] = []
            timer = QTimer()
            timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
            timer.start(5)
            t0 = time.perf_counter()
            dlg.start()
            _wait(app, lambda: not dlg.running(), 600)
            timer.stop()
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            worst = sorted(range(len(gaps)), key=gaps.__getitem__)[-3:]
            out["retrain_worst_stalls_at_s"] = [(round(ticks[i] - t0, 2), round(1000 * gaps[i], 1)) for i in worst]
            out["retrain_s"] = round(time.perf_counter() - t0, 1)
            out["retrain_ok"] = dlg.result is not None
            out["retrain_max_stall_ms"] = round(1000 * max(gaps), 1)
            out["retrain_p99_stall_ms"] = round(1000 * sorted(gaps)[int(0.99 * (len(gaps) - 1))], 1)
        win.close()
        if args.startup:
            out.update(startup_times(model, image, args.startup, args.baseline, args.baseline_model))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return out


def _wait(app, cond, timeout_s: float) -> None:
    end = time.perf_counter() + timeout_s
    while not cond():
        if time.perf_counter() > end:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.001)


if __name__ == "__main__":
    main()
