"""Signals and thread tasks under load, in a child process each: no crash. PySide6's emit() leaks a
reference to True on some releases (allgui.pyside_fix pads it), and a thread task dropped while it
runs must not be destroyed in the pool thread (allgui.workers holds it until it is done)."""
import subprocess
import sys
import textwrap


def test_many_emits_do_not_free_true():
    script = textwrap.dedent("""
        import allgui.workers  # noqa: F401 (applies the fix)
        from PySide6.QtCore import QObject, Signal
        class P(QObject):
            s = Signal(object)
        p = P()
        p.s.connect(lambda x: None)
        for i in range(200_000):
            p.s.emit(i)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "ok"


def test_thread_tasks_dropped_while_running_do_not_crash():
    """Whoever starts a ThreadTask may drop it at once (a superseded job): it must not then be destroyed
    in the pool thread while the GUI thread delivers its messages."""
    script = textwrap.dedent("""
        import gc, sys, time
        from PySide6.QtCore import QThreadPool
        from PySide6.QtWidgets import QApplication
        from allgui.workers import ThreadTask
        app = QApplication(sys.argv[:1])
        got = []
        def work(i, progress, cancel, emit):
            for k in range(3):
                emit(k)
                time.sleep(0.0002)
            return i
        for i in range(1500):
            t = ThreadTask(work, i, pool=QThreadPool.globalInstance())
            t.partial.connect(got.append)
            t.start()
            del t                        # dropped while it runs
            if i % 5 == 0:
                app.processEvents()
            if i % 50 == 0:
                gc.collect()
        QThreadPool.globalInstance().waitForDone()
        app.processEvents()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "ok"
