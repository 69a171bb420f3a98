"""`python -m allgui`, as a user starts it, in a separate process (offscreen)."""
import os
import subprocess
import sys

import cv2
import numpy as np

from trainer.io.synthetic import make_cell_image


def test_app_starts_loads_a_model_and_shows_a_result(tiny_bundle, tmp_path):
    img, _ = make_cell_image(64, malignant=True, rng=np.random.default_rng(0))
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), img[:, :, ::-1])
    shot = tmp_path / "window.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "allgui", "--model", str(tiny_bundle), "--open", str(crop),
                           "--screenshot", str(shot), "--timeout", "90"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]  # 0: the window was shot once the result was shown
    window = cv2.imread(str(shot))
    assert window is not None and window.shape[0] >= 600 and window.shape[1] >= 1000
    assert window.std() > 10  # a drawn window, not a blank grab


def test_app_help_lists_its_options():
    done = subprocess.run([sys.executable, "-m", "allgui", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--model", "--open", "--screenshot"):
        assert option in done.stdout
