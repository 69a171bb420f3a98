"""``allgui-train train``: train a model and write a bundle."""
from __future__ import annotations

import argparse

from trainer.cli.common import ProgressBar, check_output_file
from trainer.cli.options import add_data_options, add_model_options, check_model_args, config_from_args


def register(sub) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``sub`` (an argparse subparsers object)."""
    t = sub.add_parser("train", help="train a model and write a bundle",
                       description="Train on a labelled image folder; write a model bundle with its model card.")
    add_data_options(t)
    add_model_options(t)
    t.add_argument("-o", "--output", default="model.allmodel", help="model bundle to write (default: %(default)s)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run)
    return t


def run(a) -> int:
    from trainer.inference.card_text import calibration_source, headline_lines  # numpy, only when training
    from trainer.training.pipeline import train  # torch and the models load only when training
    check_model_args(a)
    check_output_file(a.output, "-o/--output")
    config = config_from_args(a).validate()
    bar = ProgressBar(a.quiet)
    try:
        result = train(config, progress=bar)
    finally:
        bar.close()
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(f"Model written to {result.bundle_path} ({result.seconds:.0f} s)")
    split = result.card["split"]
    print(f"Split: {split['protocol']}-level, train/val/test = "
          f"{split['n_train']}/{split['n_validation']}/{split['n_test']}")
    for note in result.card.get("notes", []):
        print(note)
    for key, model in result.model.models.items():
        section = result.card["models"][key]
        data = section["data"]
        print(f"\n{section['name'].capitalize()}: {data['n_train']}/{data['n_validation']}/{data['n_test']} images, "
              f"test subjects/groups: {data['n_groups']['test']}; threshold ({calibration_source(section)}) "
              f"{model.threshold_:.3f}; combiner {model.combiner_}; calibration {model.calibrator_.method_}")
        print("\n".join(headline_lines(section)))  # cross-validation first, then the test split, as the card says
        test = result.per_model.get(key) or {}
        if test:
            print("Test split, one split, every read-out:\n" + _table(test))
        else:
            val = section["metrics"]["validation"]["ensemble_calibrated"]
            print(f"No test split; validation accuracy {val['accuracy']:.3f}")
    return 0


def _table(m: dict) -> str:
    rows = ["classifier       acc    prec   recall spec   F1     AUC    Brier"]
    for name, r in m.items():
        auc = "  -  " if r.get("auc") is None else f"{r['auc']:.3f}"
        brier = "  -  " if r.get("brier") is None else f"{r['brier']:.3f}"
        rows.append(f"{name:15s} {r['accuracy']:.3f}  {r['precision']:.3f}  {r['recall']:.3f}  "
                    f"{r['specificity']:.3f}  {r['f1']:.3f}  {auc}  {brier}")
    return "\n".join(rows)

