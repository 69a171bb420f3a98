"""A labels file or label option is honoured in every layout, or refused with one clear message; never
silently ignored (the C-NMC all/ + hem/ layout included)."""
import csv

import pytest

from trainer.cli.main import main
from trainer.io.synthetic import write_dataset


@pytest.fixture
def cnmc(tmp_path):
    """A C-NMC folder (all/ + hem/, UID_ names): 6 images a class, subjects 1-3 and H1-H3."""
    return write_dataset(tmp_path / "cnmc", layout="cnmc", n_per_class=6, size=48, seed=2, n_subjects=3)


def _write_csv(path, rows, header=("path", "label", "group")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def loaded(monkeypatch):
    """The dataset ``train`` would train on, without training (``loaded[0]`` after a run)."""
    from trainer.training import pipeline

    seen = []

    def train(config, progress=None, **k):
        seen.append(pipeline.load_config_dataset(config))
        return None  # as a non-zero torchrun rank returns: nothing to report

    monkeypatch.setattr(pipeline, "train", train)
    return seen


def test_train_honours_a_named_labels_csv_in_the_cnmc_layout(cnmc, tmp_path, loaded, capsys):
    files = sorted(cnmc.rglob("*.bmp"))
    flipped = {f for f in files if f.name.startswith("UID_1_")}  # subject 1's ALL crops called normal
    rows = [(f.relative_to(cnmc).as_posix(), int(f.parent.name == "all" and f not in flipped),
             f"patient-{f.name.split('_')[1]}") for f in files]
    labels = _write_csv(cnmc / "mine.csv", rows)
    assert main(["train", str(cnmc), "--labels-csv", str(labels), "-q", "-o", str(tmp_path / "m.allmodel")]) == 0
    (ds,) = loaded
    by_path = {s.path: s for s in ds.samples}
    assert len(by_path) == len(files)
    assert all(by_path[f].label == 0 for f in flipped) and flipped
    assert {s.group for s in ds.samples} == {"patient-1", "patient-2", "patient-3", "patient-H1", "patient-H2",
                                             "patient-H3"}  # the csv's groups, not the file names'
    assert f"{len(flipped)} image(s) are labelled in mine.csv against their all/ or hem/ folder" in \
        capsys.readouterr().err


def test_a_cnmc_labels_csv_without_groups_keeps_the_subjects_of_the_file_names(cnmc, tmp_path, loaded):
    files = sorted(cnmc.rglob("*.bmp"))[1:]  # one image left out of the csv: left out of the data
    labels = _write_csv(cnmc / "labels.csv", [(f.relative_to(cnmc).as_posix(), f.parent.name) for f in files],
                        header=("path", "class"))
    assert main(["train", str(cnmc), "--labels-csv", "labels.csv", "-q", "-o", str(tmp_path / "m.allmodel")]) == 0
    (ds,) = loaded
    assert len(ds.samples) == len(files) and labels.is_file()
    assert {s.group for s in ds.samples} == {"1", "2", "3", "H1", "H2", "H3"}


def test_a_group_column_in_the_cnmc_layout_reads_the_labels_csv_or_is_refused(cnmc, tmp_path, loaded, capsys):
    out = str(tmp_path / "m.allmodel")
    assert main(["train", str(cnmc), "--group-column", "patient", "-q", "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "group column ('patient') is read from a labels.csv; there is none" in err[0]
    files = sorted(cnmc.rglob("*.bmp"))
    _write_csv(cnmc / "labels.csv", [(f.relative_to(cnmc).as_posix(), f.parent.name, f"p{i % 4}")
                                     for i, f in enumerate(files)], header=("path", "class", "patient"))
    assert main(["train", str(cnmc), "--group-column", "patient", "-q", "-o", out]) == 0
    assert {s.group for s in loaded[0].samples} == {"p0", "p1", "p2", "p3"}


def test_positive_classes_in_the_cnmc_layout_are_refused(cnmc, tmp_path, loaded, capsys):
    assert main(["train", str(cnmc), "--positive", "hem", "-q", "-o", str(tmp_path / "m.allmodel")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "C-NMC layout, where all/ holds the ALL images" in err[0]
    assert loaded == []


def test_labels_csv_with_several_data_folders_is_refused_before_any_work(cnmc, tmp_path, loaded, capsys):
    other = write_dataset(tmp_path / "other", layout="folders", n_per_class=4, size=48, seed=3)
    assert main(["train", str(cnmc), str(other), "--labels-csv", str(other / "labels.csv"), "-q",
                 "-o", str(tmp_path / "m.allmodel")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["allgui-train: error: --labels-csv applies to one data folder, not 2: give one folder, or a "
                   "labels.csv inside each folder of the folders layout (read without the option)."]
    assert loaded == []


@pytest.fixture
def folders(tmp_path):
    from trainer.io.synthetic import write_dataset
    return write_dataset(tmp_path / "folders", layout="folders", n_per_class=4, size=48, seed=4)


def _append_rows(folder, lines: bytes):
    with open(folder / "labels.csv", "ab") as fh:
        fh.write(lines)


def test_a_labels_csv_path_that_is_not_utf8_names_the_file_on_disk(folders):
    from trainer.io.data import load_dataset
    src = sorted((folders / "Pro").glob("*.png"))[0]
    with open(folders / "Pro" / "caf\udce9.png", "wb") as fh:  # the file name's byte 0xe9, as on disk
        fh.write(src.read_bytes())
    _append_rows(folders, b"Pro/caf\xe9.png,Pro,1,Pro-9\n")
    ds = load_dataset(folders)
    assert any(s.path.name == "caf\udce9.png" and s.label == 1 and s.group == "Pro-9" for s in ds.samples)


def test_bad_labels_csv_rows_cost_only_themselves_and_say_why(folders):
    from trainer.io.data import load_dataset
    _append_rows(folders, b"Pro,Pro,1,Pro-1\n" + b"Pro/" + b"b" * 300 + b".png,Pro,1,Pro-1\n")
    ds = load_dataset(folders)
    why = {p.name[:8]: reason for p, reason in ds.skipped}
    assert why["Pro"] == "a folder, not an image file (listed in labels.csv)"
    assert why["bbbbbbbb"] == "File name too long (listed in labels.csv)"
    assert len(ds) == 8


def test_an_unreadable_labels_csv_is_refused_naming_the_line(folders):
    from trainer.io.data import load_dataset
    from trainer.util.errors import DataError
    _append_rows(folders, b"Pro/x.png,Pro,1," + b"g" * 200_000 + b"\n")
    with pytest.raises(DataError, match=r"Cannot read labels file labels.csv \(line 10\): field larger"):
        load_dataset(folders)
