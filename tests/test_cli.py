"""The allgui-train command line as a user runs it."""
import csv

import numpy as np
import pytest

from trainer.cli.main import main
from trainer.io.imageio import read_image
from trainer.io.synthetic import make_smear_field


@pytest.mark.parametrize("sub", ["train", "evaluate", "predict"])
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: allgui-train " + sub in out


def test_predict_writes_a_row_per_image_and_per_cell(tiny_domain_bundle, tiny_cnmc, tmp_path, capsys):
    import cv2
    field, masks = make_smear_field(224, n_wbc=3, rng=np.random.default_rng(4))
    cv2.imwrite(str(tmp_path / "field.png"), field[:, :, ::-1])
    crop = sorted((tiny_cnmc / "all").glob("*.bmp"))[0]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "pred.csv"
    code = main(["predict", str(crop), str(tmp_path / "field.png"), str(tmp_path / "broken.jpg"),
                 "-m", str(tiny_domain_bundle), "-o", str(out), "-q", "--threshold", "0.5"])
    rows = list(csv.DictReader(open(out)))
    # exit 1 only where no image got a class (a field given to the crop-only model may be outside training)
    classified = [r for r in rows if r.get("cell") == "image" and r["decision"] not in
                  ("", "not assessable", "outside training")]
    assert code == (0 if classified else 1)
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"].rsplit("/", 1)[-1], []).append(r)
    assert [r["cell"] for r in by_file[crop.name]] == ["image"]
    assert by_file[crop.name][0]["kind"] == "single_cell"
    assert [r["cell"] for r in by_file["field.png"]] == ["image", "0", "1", "2"]
    assert "broken.jpg" in by_file and by_file["broken.jpg"][0]["error"]
    for r in by_file["field.png"]:
        p, band = float(r["probability"]), float(r["band"])
        assert 0 <= p <= 1 and r["in_domain"] in ("yes", "no")
        expected = ("outside training" if r["in_domain"] == "no" else "uncertain, review" if abs(p - 0.5) < band
                    else ("ALL blast" if p >= 0.5 else "normal"))
        assert r["decision"] == expected
    # the tiny model was trained on crops: a field is as suspicious as its most suspicious cell inside the
    # model's domain (of all cells where none is)
    field_rows = by_file["field.png"]
    cells = field_rows[1:]
    deciding = [r for r in cells if r["in_domain"] == "yes"] or cells
    best = max(deciding, key=lambda r: float(r["probability"]))
    assert field_rows[0]["probability"] == best["probability"]
    assert field_rows[0]["decided_by"] == f"cell {best['cell']}"
    assert by_file[crop.name][0]["decided_by"] == "whole image"
    assert "1 could not be read" in capsys.readouterr().err
    assert read_image(crop).shape[2] == 3


def test_train_reports_clear_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "-q", "-o", str(tmp_path / "m.allmodel")]) == 2
    assert "Data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "m.allmodel").exists()
    assert main(["predict", str(tmp_path), "-m", str(tmp_path / "none.allmodel"), "-q"]) == 2
    assert "error" in capsys.readouterr().err


def test_train_from_the_command_line(tiny_cnmc, tmp_path, capsys):
    out = tmp_path / "cli.allmodel"
    code = main(["train", str(tiny_cnmc), "--image-size", "32", "--workers", "0", "--no-cache",
                 "--classifiers", "svm,knn,mlp", "--no-pca", "--cv-repeats", "1", "--cv-folds", "3", "-q",
                 "-o", str(out)])
    assert code == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "subject-level" in text and "ensemble" in text
    from trainer.inference.bundle import read_manifest
    cfg = read_manifest(out)["config"]
    assert cfg["classifiers"] == ["svm", "knn", "mlp"] and cfg["pca"] is False and cfg["image_size"] == 32
