"""Training data a user (or an attacker) hands over: labels.csv paths stay inside the data folder,
identical images under both labels are left out, and skipped files are reported on the console."""
import shutil

import numpy as np
import pytest

from trainer.cli.main import main
from trainer.io.data import load_dataset
from trainer.io.synthetic import write_dataset


@pytest.fixture
def folder(tmp_path):
    return write_dataset(tmp_path / "data", layout="folders", n_per_class=4, size=48, seed=1)


def _csv(folder, extra_rows):
    import csv
    rows = list(csv.reader(open(folder / "labels.csv")))
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows(rows)
        for r in extra_rows:
            w.writerow(r + [""] * (len(rows[0]) - len(r)))
    return rows[0]


def test_labels_csv_paths_outside_the_data_folder_are_refused(folder, tmp_path):
    import cv2
    secret = tmp_path / "outside.png"
    cv2.imwrite(str(secret), np.full((48, 48, 3), 128, np.uint8))
    header = _csv(folder, [])
    ip, il = header.index("path"), header.index("label")

    def row(path):
        r = [""] * len(header)
        r[ip], r[il] = path, "1"
        return r

    _csv(folder, [row("../outside.png"), row(str(secret)), row("/etc/passwd"), row("a/../../outside.png")])
    ds = load_dataset(folder)
    assert all(folder in s.path.parents for s in ds.samples)
    refused = [str(p) for p, why in ds.skipped if "outside the data folder" in why]
    assert len(refused) == 4


def test_symlinked_files_inside_the_folder_still_work(tmp_path):
    """The project's default-model build uses a folder of links to the real data."""
    src = write_dataset(tmp_path / "real", layout="folders", n_per_class=4, size=48, seed=2)
    links = tmp_path / "links"
    links.mkdir()
    lines = (src / "labels.csv").read_text().splitlines()
    for line in lines[1:]:
        rel = line.split(",")[0]
        (links / rel).parent.mkdir(parents=True, exist_ok=True)
        (links / rel).symlink_to((src / rel).resolve())
    shutil.copyfile(src / "labels.csv", links / "labels.csv")
    assert len(load_dataset(links)) == len(load_dataset(src))


def test_identical_images_under_both_labels_are_left_out_and_reported(tiny_cnmc, tmp_path, capsys):
    d = tmp_path / "cnmc"
    shutil.copytree(tiny_cnmc, d)
    a = sorted((d / "all").glob("*.bmp"))[0]
    twin = d / "hem" / "UID_H99_1_1_hem.bmp"
    shutil.copyfile(a, twin)
    ds = load_dataset(d)
    assert a not in ds.paths and twin not in ds.paths
    assert any("labelled both ALL and normal" in why for _, why in ds.skipped)
    assert any("identical images" in w for w in ds.warnings)
    # the command line says so on the console, with the reason, before it trains
    (d / "hem" / "empty.bmp").write_bytes(b"")
    code = main(["train", str(d), "--classifiers", "bogus", "-q", "-o", str(tmp_path / "m.allmodel")])
    assert code == 2  # arguments are checked first: no data read yet
    code = main(["evaluate", str(tmp_path / "nowhere"), "-q", "--out", str(tmp_path / "r")])
    assert code == 2
    capsys.readouterr()
    import logging

    from trainer.cli import main as cli
    from trainer.config import TrainConfig
    from trainer.training.pipeline import load_config_dataset
    handler = cli._ConsoleLog()
    logging.getLogger("trainer.io.data").addHandler(handler)
    logging.getLogger("trainer.io.data").setLevel(logging.INFO)
    try:
        load_config_dataset(TrainConfig(data=str(d)))
    finally:
        logging.getLogger("trainer.io.data").removeHandler(handler)
    err = capsys.readouterr().err
    assert "skipped empty.bmp" not in err and "empty.bmp: empty file (0 bytes)" in err
    assert "labelled both ALL and normal" in err


def test_train_prints_skipped_files_on_the_console(tiny_cnmc, tmp_path, capsys):
    d = tmp_path / "cnmc"
    shutil.copytree(tiny_cnmc, d)
    (d / "all" / "UID_1_9_9_all.bmp").write_bytes(b"BM not an image")
    code = main(["train", str(d), "--image-size", "32", "--workers", "0", "--no-cache", "--classifiers",
                 "svm,knn", "--no-pca", "-q", "-o", str(tmp_path / "m.allmodel"), "--backbones", "resnet34"])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "UID_1_9_9_all.bmp" in err and "Cannot read image" in err
