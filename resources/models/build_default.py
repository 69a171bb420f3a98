"""Rebuild the bundled default model (``default.allmodel``) from redistributable data.

The default model is trained on two openly licensed sets together, so that it has seen both
kinds of image the app opens:

* C-NMC 2019 single-cell crops (Gupta & Gupta, The Cancer Imaging Archive, CC BY 3.0):
  ``all`` = ALL blast, ``hem`` = normal; grouped by subject.
* The ALL image dataset of Aria et al. (Taleqani Hospital; CC BY 4.0): smear fields,
  ``Benign`` = normal, ``Early``/``Pre``/``Pro`` B-ALL = ALL; grouped by its ``group`` column.

The sample crops shipped in ``resources/samples`` are left out of training, so the app's
demonstration images are unseen. The images themselves are not part of this repository.

Usage::

    python resources/models/build_default.py --cnmc PATH/cnmc --aria PATH/aria \
        [--out resources/models/default.allmodel] [--image-size 224]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "samples"
ARIA_POSITIVE = {"Early", "Pre", "Pro"}
DESCRIPTION = ("C-NMC 2019 single-cell crops (the shared 63-image sample less the 8 crops shipped as app "
               "samples) and 1,200 smear fields of the Aria et al. ALL image dataset (Benign vs Early/Pre/Pro "
               "B-ALL), split by subject / image group")
CREDITS = ["Gupta A., Gupta R., 'ALL Challenge dataset of ISBI 2019', The Cancer Imaging Archive, 2019, "
           "doi:10.7937/tcia.2019.dc64i46r, CC BY 3.0",
           "Aria M., Ghaderzadeh M., Bashash D. et al., 'Acute Lymphoblastic Leukemia (ALL) image dataset', "
           "Taleqani Hospital, Tehran, CC BY 4.0"]


def combined_folder(cnmc: Path, aria: Path, dest: Path) -> Path:
    """A folder of symbolic links plus ``labels.csv`` (path, class, label, group, source)."""
    from trainer.data import load_dataset

    held_out = {p.stem for p in SAMPLES.glob("*.png")}
    rows = []
    for s in load_dataset(cnmc, layout="cnmc"):
        if s.path.stem in held_out:
            continue
        rows.append(("cnmc", s.path, s.class_name, s.label, f"cnmc-{s.group}"))
    for s in load_dataset(aria, layout="folders", positive=sorted(ARIA_POSITIVE), group_column="group"):
        rows.append(("aria", s.path, s.class_name, s.label, f"aria-{s.group}"))
    with open(dest / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "label", "group", "source"])
        for i, (src, path, cls, label, group) in enumerate(rows):
            link = dest / src / f"{i:05d}_{path.name}"
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(path.resolve())
            w.writerow([link.relative_to(dest).as_posix(), cls, label, group, src])
    return dest


LIMITATIONS = [
    "Backbones are randomly initialised (no ImageNet weights could be used when it was built): the "
    "deep features are generic, so accuracy is far below the paper's.",
    "Most training images are Aria et al. smear fields; only 55 C-NMC single-cell crops were used. "
    "On C-NMC-style crops its output is not validated (see test_by_source) and should not be trusted.",
    "Validation and test splits hold few subjects/groups (the Aria set has four benign groups), so the "
    "threshold chosen on validation transfers poorly: check sensitivity and specificity at the threshold "
    "you use.",
    "Per-cell probabilities on smear fields come from a model trained on whole fields.",
]


def annotate(bundle_path: Path, root: Path) -> dict:
    """Add per-source test metrics and the limitations to the bundle's model card (rewritten atomically)."""
    import numpy as np

    from trainer import metrics
    from trainer.bundle import load_bundle, save_bundle
    from trainer.data import load_dataset
    from trainer.pipeline import split_dataset

    bundle = load_bundle(bundle_path)
    cfg = bundle.config
    ds = load_dataset(root, layout=cfg.layout, positive=cfg.positive, group_column=cfg.group_column)
    _, _, test_idx = split_dataset(ds, "subject", cfg)
    y, p = bundle.arrays["test/y"], bundle.arrays["test/calibrated"]
    if not np.array_equal(y, ds.labels[test_idx]):
        raise SystemExit("the data do not match the bundle's test split")
    source = np.array([ds.paths[i].parent.name for i in test_idx])
    by_source = {}
    for src in ("aria", "cnmc"):
        m = source == src
        if m.any():
            by_source[src] = metrics.binary_report(y[m], p[m], bundle.model.threshold_, n_boot=1000,
                                                   seed=cfg.seed)
    bundle.card["metrics"]["test_by_source"] = by_source
    bundle.card["limitations"] = LIMITATIONS
    save_bundle(bundle_path, bundle)
    return by_source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cnmc", type=Path, required=True, help="C-NMC folder with all/ and hem/")
    ap.add_argument("--aria", type=Path, required=True, help="Aria et al. folder with class folders and labels.csv")
    ap.add_argument("--out", type=Path, default=HERE / "default.allmodel")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="feature cache folder (default: none)")
    a = ap.parse_args(argv)

    from trainer.cli import ProgressBar
    from trainer.config import TrainConfig
    from trainer.pipeline import train

    with tempfile.TemporaryDirectory() as tmp:
        root = combined_folder(a.cnmc, a.aria, Path(tmp))
        config = TrainConfig(data=str(root), layout="folders", positive=["ALL", "all"] + sorted(ARIA_POSITIVE),
                             group_column="group", split="subject", weights="none",
                             image_size=a.image_size, seed=a.seed, output=str(a.out), cache_dir=a.cache_dir,
                             extra={"name": "allgui default model (random-init backbones)",
                                    "data_description": DESCRIPTION, "data_credits": CREDITS})
        bar = ProgressBar()
        result = train(config, progress=bar)
        bar.close()
        by_source = annotate(result.bundle_path, root)
    print(json.dumps({"all": result.card["metrics"]["test"]["ensemble_calibrated"], **by_source}, indent=1))
    print(f"written {result.bundle_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
