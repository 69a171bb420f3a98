"""The command line against hostile input and faults: every bad file costs only its own row,
arguments are checked before any work, exit codes say what happened, CSVs are spreadsheet-safe."""
import csv
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.cli import predict as cli
from trainer.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def crops(tiny_cnmc, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    src = sorted((tiny_cnmc / "all").glob("*.bmp"))[:2]
    for i, f in enumerate(src):
        shutil.copyfile(f, d / f"good{i}.bmp")
    return d, src


@pytest.fixture
def counting(tiny_predictor, monkeypatch):
    """The tiny predictor, with its predict_batch calls recorded (and loaded only once)."""
    calls = []
    real = tiny_predictor.predict_batch

    def predict_batch(items, *a, **k):
        calls.append(len(list(items)) if not isinstance(items, list) else len(items))
        return real(items, *a, **k)

    monkeypatch.setattr(tiny_predictor, "predict_batch", predict_batch)
    monkeypatch.setattr("trainer.inference.predictor.Predictor.from_bundle",
                        classmethod(lambda cls, *a, **k: tiny_predictor))
    return calls


def test_missing_input_is_an_error_row_and_a_nonzero_exit(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "nonexistent.png"), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "0 images classified" in err and "no image could be classified" in err
    rows = _rows(out)
    assert len(rows) == 1 and "file not found" in rows[0]["error"]


@pytest.mark.timeout(120)
def test_one_bad_file_in_a_folder_costs_only_itself(crops, tiny_bundle, counting, tmp_path, capsys):
    d, _ = crops
    (d / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(d / "hang.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    rows = {Path(r["file"]).name: r for r in _rows(out)}
    assert rows["good0.bmp"]["decision"] and rows["good1.bmp"]["decision"]
    assert "device" in rows["zero.png"]["error"] and "pipe" in rows["hang.png"]["error"]
    assert "2 images classified" in capsys.readouterr().err
    assert counting[0] == 4  # the batched path was tried first, then image by image


def test_folders_are_classified_in_batches(crops, tiny_bundle, counting, tmp_path, monkeypatch):
    d, src = crops
    for i in range(3):
        shutil.copyfile(src[0], d / f"more{i}.bmp")
    monkeypatch.setattr(cli, "PREDICT_BATCH", 3)
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(tmp_path / "p.csv"), "-q"]) == 0
    assert counting == [3, 2]
    assert len(_rows(tmp_path / "p.csv")) == 5


def test_ctrl_c_keeps_the_rows_already_computed(crops, tiny_bundle, tiny_predictor, counting, tmp_path,
                                                monkeypatch, capsys):
    d, src = crops
    for i in range(3):
        shutil.copyfile(src[0], d / f"more{i}.bmp")
    monkeypatch.setattr(cli, "PREDICT_BATCH", 2)
    counted = tiny_predictor.predict_batch

    def interrupted_second_time(items, *a, **k):
        if len(counting) == 1:
            raise KeyboardInterrupt
        return counted(items, *a, **k)

    monkeypatch.setattr(tiny_predictor, "predict_batch", interrupted_second_time)
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 130
    assert len(_rows(out)) == 2  # the first batch was kept
    assert "kept" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_names_a_spreadsheet_would_run_are_neutralised(crops, tiny_bundle, counting, tmp_path, monkeypatch):
    d, src = crops
    names = ["=HYPERLINK(x).bmp", "+1.bmp", "-2.bmp", "@3.bmp"]
    for n in names:
        shutil.copyfile(src[0], d / n)
    monkeypatch.chdir(d)
    assert main(["predict", "-m", str(tiny_bundle), "-o", str(tmp_path / "p.csv"), "-q", "--", *names]) == 0
    files = [r["file"] for r in _rows(tmp_path / "p.csv")]
    assert files == ["'" + n for n in names]


def test_non_utf8_file_name_is_written_escaped(crops, tiny_bundle, counting, tmp_path, capsys):
    d, src = crops
    with open(os.path.join(os.fsencode(d), b"caf\xe9.bmp"), "wb") as fh:
        fh.write(src[0].read_bytes())
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    files = [Path(r["file"]).name for r in _rows(out)]
    assert "caf\\xe9.bmp" in files
    assert "3 images classified" in capsys.readouterr().err


def test_blank_image_is_not_assessable(tiny_bundle, counting, tmp_path):
    import cv2
    cv2.imwrite(str(tmp_path / "white.png"), np.full((64, 64, 3), 255, np.uint8))
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "white.png"), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    (row,) = _rows(out)
    assert row["decision"] == "not assessable" and row["probability"] == ""


def _no_predictor(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr("trainer.inference.predictor.Predictor.from_bundle", fail)
    monkeypatch.setattr("trainer.training.pipeline.train", fail)
    monkeypatch.setattr("trainer.evaluation.run_evaluation", fail)


def test_bad_output_paths_and_names_are_refused_before_any_work(tmp_path, monkeypatch, capsys, tiny_cnmc):
    _no_predictor(monkeypatch)
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    model = tmp_path / "m.allmodel"
    assert main(["predict", str(img), "-m", str(model), "-o", str(tmp_path), "-q"]) == 2
    assert "existing folder" in capsys.readouterr().err
    assert main(["predict", str(img), "-m", str(model), "-o", "/proc/allgui.csv", "-q"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_cnmc), "--out", str(img), "-q"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", str(tiny_cnmc), "--classifiers", "bogus", "-q", "-o", str(model)]) == 2
    assert "Unknown classifiers: bogus" in capsys.readouterr().err
    assert main(["train", str(tiny_cnmc), "-q", "-o", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["predict", str(img), "-m", str(model), "--threshold", "7"])
    assert not model.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_folder_is_refused(tmp_path, monkeypatch, capsys):
    _no_predictor(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["predict", str(tmp_path), "-m", "m.allmodel", "-o", str(ro / "p.csv"), "-q"]) == 2
    finally:
        ro.chmod(0o700)
    assert "cannot write" in capsys.readouterr().err


def test_full_disk_is_one_line_and_no_temporary(crops, tiny_bundle, counting, tmp_path, monkeypatch, capsys):
    d, _ = crops

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("trainer.util.atomic.os.fsync", full)
    out = tmp_path / "o" / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["allgui-train: error: No space left on device"]
    assert list(out.parent.iterdir()) == []


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return env


@pytest.mark.timeout(300)
def test_sigterm_during_predict_leaves_no_temporary_and_says_what_was_kept(tiny_bundle, tiny_cnmc, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    src = sorted((tiny_cnmc / "all").glob("*.bmp"))[0]
    for i in range(400):
        os.link(src, d / f"c{i:03d}.bmp")
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "predict", str(d), "-m", str(tiny_bundle),
                             "-o", str(out), "-q", "--device", "cpu"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = [p for p in out.parent.iterdir() if "tmp" in p.name]
        if tmps and tmps[0].stat().st_size > 2000:  # some rows are written
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "kept" in err
    assert [p.name for p in out.parent.iterdir()] == ["p.csv"]
    assert 0 < len(_rows(out)) < 400


@pytest.mark.timeout(300)
def test_console_entry_exits_fast_yet_flushes_every_row_and_keeps_the_exit_code(tiny_bundle, tiny_cnmc, tmp_path):
    # ``python -m trainer`` skips the interpreter's teardown: the rows piped to stdout and the stderr summary
    # must still all arrive, and errors keep their exit codes
    files = sorted((tiny_cnmc / "all").glob("*.bmp"))[:3] + sorted((tiny_cnmc / "hem").glob("*.bmp"))[:2]
    done = subprocess.run([sys.executable, "-m", "trainer", "predict", *map(str, files), "-m", str(tiny_bundle),
                           "-o", "-", "--device", "cpu"], env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert all(r["decision"] in ("ALL blast", "normal", "uncertain, review") for r in rows)
    assert "5 images classified" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "trainer", "predict", str(files[0]), "-m", str(tmp_path / "none")],
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "error" in bad.stderr and bad.stdout == ""


@pytest.mark.timeout(120)
def test_temporary_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    from trainer.util.atomic import atomic_write
    target = tmp_path / "model.allmodel"
    code = ("import sys,time; from trainer.util.atomic import atomic_write; "
            "atomic_write(sys.argv[1], lambda fh: (fh.write(b'half'), fh.flush(), print('writing', flush=True), "
            "time.sleep(60)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".model.allmodel.")
    atomic_write(target, lambda fh: fh.write(b"complete"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.allmodel"]
    assert target.read_bytes() == b"complete"
