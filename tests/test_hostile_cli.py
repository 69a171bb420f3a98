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
import threading
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
    assert err.strip().splitlines() == [f"allgui-train: error: no image received a class (0 images classified, "
                                        f"1 could not be read); results in {out}."]
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
    assert "2 images classified, 2 could not be read" in capsys.readouterr().err
    assert counting == [2]  # the unreadable files never reached the networks


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


def test_blank_image_is_not_assessable_and_no_class_at_all_is_a_failure(tiny_bundle, counting, tmp_path, capsys):
    import cv2
    cv2.imwrite(str(tmp_path / "white.png"), np.full((64, 64, 3), 255, np.uint8))
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "white.png"), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 1
    (row,) = _rows(out)
    assert row["decision"] == "not assessable" and row["probability"] == ""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("allgui-train: error: no image received a class (0 images "
                                               "classified, 1 not assessable")


def test_summary_counts_classified_not_assessable_and_unreadable_apart(crops, tiny_bundle, counting, tmp_path,
                                                                       capsys):
    import cv2
    d, _ = crops
    cv2.imwrite(str(d / "white.png"), np.full((64, 64, 3), 255, np.uint8))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("2 images classified, 1 not assessable (no cell found, no class "
                                               "given), 1 could not be read (threshold ")


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
    out.parent.mkdir()
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["allgui-train: error: No space left on device"]
    assert list(out.parent.iterdir()) == []


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return env


def _tiny_pngs(folder: Path, n: int, prefix: str) -> None:
    """``n`` PNGs of 2x2 pixels: decoded, then refused as too small to analyse."""
    import cv2
    for i in range(n):
        cv2.imwrite(str(folder / f"{prefix}{i:04d}.png"), np.full((2, 2, 3), i % 256, np.uint8))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.timeout(300)
def test_signal_stops_predict_on_a_folder_of_unreadable_images_and_keeps_the_rows(tiny_bundle, tiny_cnmc, tmp_path,
                                                                                   signum):
    # 16 crops, 400 images too small to analyse, then 200 crops: the signal is sent once the rows of the
    # unreadable ones are written, so it arrives while they are (or were just) handled
    d = tmp_path / "in"
    d.mkdir()
    src = sorted((tiny_cnmc / "all").glob("*.bmp"))[0]
    for i in range(16):
        os.link(src, d / f"a{i:03d}.bmp")
    _tiny_pngs(d, 400, "b")
    for i in range(200):
        os.link(src, d / f"c{i:03d}.bmp")
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "predict", str(d), "-m", str(tiny_bundle),
                             "-o", str(out), "-q", "--device", "cpu"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = [p for p in out.parent.iterdir() if p.name.endswith(".allgui-tmp")]
        if tmps and b"b0000.png" in tmps[0].read_bytes():
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < 20, f"{took:.1f} s from the signal to the exit"  # within a batch or two; not the whole folder
    assert "interrupted" in err and "kept" in err
    assert [p.name for p in out.parent.iterdir()] == ["p.csv"]
    rows = _rows(out)
    assert 32 <= len(rows) < 616 and len({r["file"] for r in rows}) == len(rows)
    assert all("too small" in r["error"] for r in rows if Path(r["file"]).name.startswith("b"))


def test_an_interruption_is_not_replaced_by_the_error_of_the_image_being_analysed(tiny_predictor, tmp_path,
                                                                                 monkeypatch):
    # Ctrl-C while the networks judge an image that its segmentation then refuses: the interruption wins
    _tiny_pngs(tmp_path, 1, "t")
    side = threading.Event()
    real_prepare = tiny_predictor._prepare_with_nucleus

    def prepare(*a, **k):
        try:
            return real_prepare(*a, **k)
        finally:
            side.set()

    def interrupted(items, *a, **k):
        side.wait(30)  # the segmentation thread has failed by now
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_predictor, "_prepare_with_nucleus", prepare)
    monkeypatch.setattr(tiny_predictor._networks, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_predictor.predict(tmp_path / "t0000.png")


def test_a_signal_whose_interruption_was_swallowed_still_stops_the_run(tmp_path, monkeypatch):
    from trainer.cli.common import sigterm_interrupts

    monkeypatch.setattr(cli, "PREDICT_BATCH", 2)
    judged = []

    class Swallowing:
        """A predictor in which some library code catches the KeyboardInterrupt of a signal."""

        def predict_batch(self, batch):
            judged.extend(batch)
            if len(judged) == 2:
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(1000):  # the handler runs here
                        time.sleep(0.001)
                except KeyboardInterrupt:
                    pass
            raise ValueError("unreadable")

        def predict(self, f):
            raise ValueError("unreadable")

    emitted = []
    with sigterm_interrupts():
        n_ok, n_err, interrupted = cli.classify_files(Swallowing(), [tmp_path / f"{i}.png" for i in range(8)],
                                                      {}, emitted.append)
    assert interrupted and len(judged) == 2 and emitted == []


def test_unreadable_images_never_reach_the_networks(crops, tiny_bundle, tiny_predictor, counting, tmp_path,
                                                     monkeypatch, capsys):
    d, _ = crops
    _tiny_pngs(d, 30, "t")
    for i in range(3):
        (d / f"x{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(30))
    lone = []
    monkeypatch.setattr(tiny_predictor, "predict", lambda *a, **k: lone.append(a))
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    assert counting == [2] and lone == []  # the two crops once, in one batch; no image alone
    rows = _rows(out)
    assert len(rows) == 35 and sum(bool(r["error"]) for r in rows) == 33
    assert "2 images classified, 33 could not be read" in capsys.readouterr().err


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


def test_explain_names_a_missing_cell_as_the_csv_numbers_cells(tiny_bundle, tmp_path, capsys):
    import cv2

    from trainer.io.synthetic import make_cell_image, make_smear_field
    field, _ = make_smear_field(160, 2, np.random.default_rng(1))
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    out = tmp_path / "h.png"
    assert main(["explain", str(tmp_path / "field.png"), "-m", str(tiny_bundle), "-o", str(out), "--cell", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cell 999: there is no cell 999 in field.png; its " in err[0]
    assert "numbered from 0 to" in err[0] or "its one white cell is cell 0" in err[0]
    crop, _ = make_cell_image(64, True, 3)
    cv2.imwrite(str(tmp_path / "crop.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    assert main(["explain", str(tmp_path / "crop.png"), "-m", str(tiny_bundle), "-o", str(out), "--cell", "0"]) == 2
    assert "no white cell was found in crop.png" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value", ["100000", "9", "0"])
def test_report_per_page_out_of_range_is_refused_by_the_parser(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path / "case.sqlite"), "-o", str(tmp_path / "r.pdf"), "--per-page", value])
    assert stop.value.code == 2
    assert f"--per-page: must be between 1 and 8, not {value}" in capsys.readouterr().err


def _output_commands(tmp_path, tiny_cnmc, target):
    img, model, case = str(tmp_path / "x.png"), str(tmp_path / "m.allmodel"), str(tmp_path / "c.sqlite")
    return {
        "predict -o": ["predict", img, "-m", model, "-o", f"{target}/p.csv", "-q"],
        "train -o": ["train", str(tiny_cnmc), "-q", "-o", f"{target}/m.allmodel"],
        "train --cache-dir": ["train", str(tiny_cnmc), "-q", "-o", model, "--cache-dir", f"{target}/cache"],
        "train --checkpoint-dir": ["train", str(tiny_cnmc), "-q", "-o", model, "--checkpoint-dir", f"{target}/ck"],
        "evaluate --out": ["evaluate", str(tiny_cnmc), "-q", "--out", f"{target}/report"],
        "explain -o": ["explain", img, "-m", model, "-o", f"{target}/h.png"],
        "report -o": ["report", case, "-o", f"{target}/r.pdf"],
        "finetune --output": ["finetune", str(tiny_cnmc), "--output", f"{target}/w.safetensors"],
        "finetune --checkpoint-dir": ["finetune", str(tiny_cnmc), "--output", str(tmp_path / "w.safetensors"),
                                      "--checkpoint-dir", f"{target}/ck"],
    }


@pytest.mark.parametrize("option", ["predict -o", "train -o", "train --cache-dir", "train --checkpoint-dir",
                                    "evaluate --out", "explain -o", "report -o", "finetune --output",
                                    "finetune --checkpoint-dir"])
def test_every_output_option_refuses_a_folder_that_does_not_exist(option, tmp_path, tiny_cnmc, monkeypatch, capsys):
    _no_predictor(monkeypatch)
    monkeypatch.setattr("trainer.training.distributed.setup_distributed", lambda *a, **k: pytest.fail("work began"))
    missing = tmp_path / "no" / "such"
    argv = _output_commands(tmp_path, tiny_cnmc, missing)[option]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"there is no folder {missing}" in err[0] and "create it first" in err[0], err
    assert not (tmp_path / "no").exists()
    # a file where a folder is expected: told as such
    (tmp_path / "file.txt").write_text("")
    argv = _output_commands(tmp_path, tiny_cnmc, tmp_path / "file.txt")[option]
    assert main(argv) == 2
    assert f"{tmp_path / 'file.txt'} is a file" in capsys.readouterr().err


def test_an_input_name_too_long_for_the_system_costs_only_its_own_row(crops, tiny_bundle, counting, tmp_path,
                                                                      capsys):
    d, _ = crops
    out = tmp_path / "p.csv"
    long_name = str(d / ("a" * 300 + ".png"))
    assert main(["predict", str(d), long_name, "-m", str(tiny_bundle), "-o", str(out), "-q"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and rows[-1]["file"] == long_name and rows[-1]["error"]
    assert "2 images classified, 1 could not be read" in capsys.readouterr().err


def test_output_names_near_and_over_the_file_system_limit(crops, tiny_bundle, counting, tmp_path, capsys):
    d, _ = crops
    near = tmp_path / ("n" * 250 + ".csv")  # fits; its temporary's name must fit too
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(near), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("n", ".n"))] == [near.name]
    assert len(_rows(near)) == 2
    capsys.readouterr()
    over = tmp_path / ("o" * 300 + ".csv")
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(over), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("allgui-train: error: -o/--output ") and "too long" in err[0]
    assert main(["predict", str(d), "-m", str(tiny_bundle), "-o", str(tmp_path) + "/x" * 2500 + ".csv", "-q"]) == 2
    assert "too long" in capsys.readouterr().err


def test_report_of_a_case_folder_reads_the_case_file_the_app_keeps_there(tmp_path, capsys):
    folder = tmp_path / "slide"
    folder.mkdir()
    assert main(["report", str(folder), "-o", str(tmp_path / "r.pdf"), "-q"]) == 2
    assert f"{folder} is a folder without a case file (allgui-case.sqlite)" in capsys.readouterr().err
    (folder / "allgui-case.sqlite").write_text("not a database")
    assert main(["report", str(folder), "-o", str(tmp_path / "r.pdf"), "-q"]) == 2
    assert "allgui-case.sqlite is not an allgui case file" in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()


def test_evaluate_refuses_a_single_fold_before_any_work(tiny_cnmc, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tiny_cnmc), "--folds", "1", "--out", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--folds: must be at least 2, not 1" in capsys.readouterr().err
