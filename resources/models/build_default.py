"""Rebuild the bundled default model (``default.allmodel``) from redistributable data.

The default model holds two calibrated models, one per kind of image the app opens:

* a **crop model** trained on C-NMC 2019 single-cell crops (Gupta & Gupta, The Cancer Imaging
  Archive, CC BY 3.0): the whole fold_1 of the training set plus the shared 63-crop sample, merged
  by subject (a crop present in both is used once); ``all`` = ALL blast, ``hem`` = normal;
* a **field model** trained on smear fields of the ALL image dataset of Aria et al. (Taleqani
  Hospital; CC BY 4.0): ``Benign`` = normal, ``Early``/``Pre``/``Pro`` B-ALL = ALL, grouped by its
  ``group`` column.

Both share one subject-level split. The subjects of the sample crops shipped in
``resources/samples`` (:data:`SAMPLE_SUBJECTS`) are left out of training, validation and test
altogether, so the app's demonstration crops come from unseen patients. The images themselves
are not part of this repository.

Usage::

    python resources/models/build_default.py --cnmc-fold1 PATH/cnmc-fold1 --cnmc-sample PATH/cnmc-sample \
        --aria PATH/aria [--out resources/models/default.allmodel] [--cache-dir DIR] [--cv-repeats N]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "samples"
ARIA_POSITIVE = {"Early", "Pre", "Pro"}
#: C-NMC subjects whose crops are shipped as app samples: none of their images is used
SAMPLE_SUBJECTS = ("1", "11", "13", "H1", "H11", "H12")
DESCRIPTION = ("C-NMC 2019 single-cell crops (fold_1 of the training set and the shared 63-crop sample, merged "
               "by subject, less the subjects of the app's sample crops) and 1,200 smear fields of the Aria et "
               "al. ALL image dataset (Benign vs Early/Pre/Pro B-ALL), split by subject / image group")
CREDITS = ["Gupta A., Gupta R., 'ALL Challenge dataset of ISBI 2019', The Cancer Imaging Archive, 2019, "
           "doi:10.7937/tcia.2019.dc64i46r, CC BY 3.0",
           "Aria M., Ghaderzadeh M., Bashash D. et al., 'Acute Lymphoblastic Leukemia (ALL) image dataset', "
           "Taleqani Hospital, Tehran, CC BY 4.0"]


def combined_folder(fold1: Path, sample: Path, aria: Path, dest: Path) -> Path:
    """A folder of symbolic links plus ``labels.csv`` (path, class, label, group, source).

    C-NMC groups are ``cnmc-<subject>`` for both C-NMC folders (so a subject in both is one group),
    identical crops are kept once, and the sample subjects are left out.
    """
    from trainer.io.data import load_dataset, merge_datasets

    cnmc = merge_datasets([load_dataset(fold1), load_dataset(sample, layout="cnmc")])
    rows = [("cnmc", s.path, s.class_name, s.label, f"cnmc-{s.group}") for s in cnmc
            if s.group not in SAMPLE_SUBJECTS]
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
    "deep features are generic; a hand-crafted nucleus block carries much of the crop model's accuracy.",
    "The crop model rests on few subjects: C-NMC fold_1 has three normal subjects with most of the normal "
    "crops, and the test split holds only a handful of subjects per class (see the subject counts beside "
    "each figure): its confidence intervals are wide.",
    "The field model's groups are blocks of 50 consecutive Aria images, a stand-in for patients.",
    "Per-cell probabilities on smear fields come from the field model, trained on whole fields: for review "
    "only.",
]


def annotate(bundle_path: Path) -> dict:
    """Add the limitations to the bundle's model card (rewritten atomically).

    Returns per model its cross-validation headline and the calibrated ensemble's test-split metrics.
    """
    from trainer.inference.bundle import load_bundle, save_bundle

    bundle = load_bundle(bundle_path)
    bundle.card["limitations"] = LIMITATIONS
    bundle.card["sample_subjects_left_out"] = list(SAMPLE_SUBJECTS)
    save_bundle(bundle_path, bundle)
    return {k: {"cross-validation": sec.get("cv"), "test split": sec["metrics"]["test"].get("ensemble_calibrated")}
            for k, sec in bundle.card["models"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cnmc-fold1", type=Path, required=True, help="C-NMC fold_1 folder (all/, hem/, labels.csv)")
    ap.add_argument("--cnmc-sample", type=Path, required=True, help="C-NMC sample folder (all/, hem/)")
    ap.add_argument("--aria", type=Path, required=True, help="Aria et al. folder with class folders and labels.csv")
    ap.add_argument("--out", type=Path, default=HERE / "default.allmodel")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="feature cache folder (default: none, a cold build)")
    ap.add_argument("--cv-repeats", type=int, default=None,
                    help="repeats of each model's subject-grouped cross-validation headline (default: the config's)")
    a = ap.parse_args(argv)

    from trainer.cli.common import ProgressBar
    from trainer.config import TrainConfig
    from trainer.training.pipeline import train

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = combined_folder(a.cnmc_fold1, a.cnmc_sample, a.aria, Path(tmp))
        config = TrainConfig(data=str(root), layout="folders", positive=["ALL", "all"] + sorted(ARIA_POSITIVE),
                             group_column="group", split="subject", weights="none", block_groups=("field",),
                             image_size=a.image_size, seed=a.seed, output=str(a.out), cache_dir=a.cache_dir,
                             **({} if a.cv_repeats is None else {"cv_repeats": a.cv_repeats}),
                             extra={"name": "allgui default model (random-init backbones)",
                                    "data_description": DESCRIPTION, "data_credits": CREDITS})
        bar = ProgressBar()
        result = train(config, progress=bar)
        bar.close()
        per_model = annotate(result.bundle_path)
    print(json.dumps(per_model, indent=1, default=str))
    print(f"written {result.bundle_path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
