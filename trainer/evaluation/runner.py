"""``run_evaluation``: data folder -> deep features -> full evaluation -> report folder."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch

from trainer.config import TrainConfig
from trainer.evaluation.core import PROTOCOLS, evaluate_features
from trainer.evaluation.finetune_ablation import frozen_vs_finetuned
from trainer.evaluation.report import write_report
from trainer.evaluation.variants import evaluate_variants
from trainer.inference.results import MODEL_NAMES
from trainer.io.splits import source_strata
from trainer.training.card_facts import group_kind
from trainer.training.crossval import cv_headline
from trainer.training.pipeline import (
    detect_kinds,
    feature_blocks,
    kind_parts,
    load_config_dataset,
    make_extractor,
    resolve_protocol,
    split_dataset,
    stain_reference,
)
from trainer.training.weights import finetune_overlap
from trainer.util.progress import Stages, check_cancel
from trainer.vision.features import NUCLEUS, FeatureExtractor

#: the steps of each model's evaluation and their weights (rough shares of their time)
MODEL_STEPS = (("features", 40), ("evaluation", 40), ("cross-validation", 20))
#: the steps of the variant ablation and their weights
VARIANT_STAGES = (("network features", 8), ("image kinds", 1), ("nucleus", 5), ("nucleus, stain-normalised", 5),
                  ("scores", 9))


@dataclass
class EvaluationOutput:
    """Where a report went; ``str()`` gives the Markdown report's path."""

    out_dir: Path
    json_path: Path
    markdown_path: Path
    figures: list[Path] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        return str(self.markdown_path)


def _finetune_ablation(dataset, config: TrainConfig, protocol: str, progress, cancel) -> dict[str, Any]:
    """Frozen vs fine-tuned features on the pipeline's split, JSON-ready (no weights)."""
    tr, va, te = split_dataset(dataset.samples, protocol, config)
    classifiers = ("ensemble", "logreg")
    out = frozen_vs_finetuned(dataset.paths, dataset.labels, tr, va, te, config, classifiers=classifiers,
                              device=config.device, progress=progress, cancel=cancel,
                              checkpoint_dir=config.finetuning.checkpoint_dir, groups=dataset.groups)
    histories = {b: {k: v for k, v in h.items() if k != "config"} for b, h in out["histories"].items()}
    return {"protocol": protocol, "weights": str(config.weights), "classifiers": list(classifiers),
            "frozen": out["frozen"], "finetuned": out["finetuned"], "histories": histories,
            "seconds": out["seconds"], "epochs": config.finetuning.epochs}


def _variant_ablation(dataset, config: TrainConfig, protocol: str, n_folds: int, n_boot: int,
                      progress, cancel) -> dict[str, Any]:
    """Feature and ensemble variants by grouped CV, per image kind (see :mod:`.variants`).

    The networks' features are the config's (no nucleus block, no stain normalisation). The hand-crafted
    nucleus block is extracted on the images as they are and on Reinhard-normalised images; the Reinhard
    reference is fitted on the training rows of the pipeline's held-out split (one colour target for every
    fold, stated in the report).
    """
    paths = dataset.paths
    stages = Stages(progress, VARIANT_STAGES)
    feats = make_extractor(config).extract(paths, progress=stages.start("network features"), cancel=cancel)
    kinds = detect_kinds(paths, stages.start("image kinds"), cancel)
    tr, _, _ = split_dataset(dataset.samples, protocol, config)
    ref = stain_reference(TrainConfig(stain="reinhard"), [paths[i] for i in tr], None, cancel)

    def nucleus(reference, name):
        ex = FeatureExtractor(backbones=(NUCLEUS,), gamma=config.gamma, batch_size=config.batch_size,
                              num_workers=config.num_workers, cache_dir=config.cache_dir, stain_reference=reference)
        return ex.extract(paths, progress=stages.start(name), cancel=cancel)

    sets = {"networks": {b: feats[b] for b in config.backbones if b in feats},
            "nucleus": nucleus(None, "nucleus"), "nucleus_stain": nucleus(ref, "nucleus, stain-normalised")}
    stages.start("scores", "Variant ablation: cross-validated scores")
    out = evaluate_variants(sets, dataset.samples, np.asarray(kinds), config, protocol=protocol, n_folds=n_folds,
                            n_boot=n_boot)
    out["stain_reference"] = [float(v) for v in ref]
    out["stain_reference_rows"] = int(len(tr))
    return out


def _per_model(dataset, config: TrainConfig, protocols, n_boot: int, n_folds: int, ablation: bool,
               progress, cancel) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_features` and the cross-validation headline of every model `train` would ship.

    The same split, image kinds, feature blocks (the nucleus block included) and stain reference (fitted on
    each kind's training rows) as :func:`trainer.training.pipeline.train`, so the report evaluates what ships.
    """
    protocol = resolve_protocol(config, dataset)
    split = split_dataset(dataset, protocol, config)
    y, groups, paths, strata = dataset.labels, dataset.groups, dataset.paths, source_strata(dataset)
    stages = Stages(progress, [("image kinds", 5 if config.per_kind else 0), ("models", 95)])
    kinds = (detect_kinds(paths, stages.start("image kinds"), cancel) if config.per_kind
             else np.full(len(paths), "any"))
    parts, notes = kind_parts(kinds, y, split, config.per_kind)
    # each model's share of the bar: its number of images
    models = Stages(stages.start("models"), [(key, max(sum(map(len, rows)), 1)) for key, rows in parts.items()])
    out = {}
    for key, (tr, va, te) in parts.items():
        steps = Stages(models.start(key), MODEL_STEPS)
        rows = np.concatenate([tr, va, te])
        ref = stain_reference(config, [paths[i] for i in tr], None, cancel)
        ex = make_extractor(config, backbones=feature_blocks(config), stain_reference=ref)
        feats = ex.extract([paths[i] for i in rows], progress=steps.start("features"), cancel=cancel)
        local = np.arange(len(rows))
        own = (local[:len(tr)], local[len(tr):len(tr) + len(va)], local[len(tr) + len(va):])
        samples = [dataset.samples[i] for i in rows]
        res = evaluate_features(feats, samples, config, protocols=protocols, n_boot=n_boot, n_folds=n_folds,
                                ablation=ablation, progress=steps.start("evaluation"),
                                cancel=cancel, splits={protocol: own}, backbones=feature_blocks(config))
        kind = group_kind(key, config)
        res.update(name=MODEL_NAMES[key], group_kind=kind, notes=list(notes))
        res["cv_headline"] = cv_headline(feats, y[rows], None if groups is None else groups[rows], config,
                                         backbones=feature_blocks(config), group_kind=kind, cancel=cancel,
                                         strata=None if strata is None else strata[rows],
                                         progress=steps.start("cross-validation"))
        out[key] = res
    return out


def run_evaluation(config: TrainConfig, out_dir: str | Path,
                   progress: Callable[[float, str], None] | None = None,
                   cancel: Callable[[], bool] | None = None, n_boot: int = 2000,
                   n_folds: int = 5, protocols: Sequence[str] = PROTOCOLS,
                   ablation: bool = True, finetune_ablation: bool = False) -> EvaluationOutput:
    """Evaluate the configured pipeline on ``config.data`` and write the report to ``out_dir``.

    Steps: read the data folder (unreadable files and repeated images skipped and listed), then for
    each model `train` would ship (one per image kind with ``per_kind``) its features as `train` extracts
    them (cached when ``config.cache_dir`` is set), :func:`~trainer.evaluation.core.evaluate_features` on
    `train`'s split and the cross-validation headline (:func:`trainer.training.crossval.cv_headline`),
    then :func:`~trainer.evaluation.report.write_report`. ``results["models"]`` holds each model's part;
    the top-level ``protocols`` and ``ablation`` are the first model's.

    Parameters
    ----------
    config : TrainConfig
        The pipeline to evaluate and the data it reads.
    out_dir : path
        Folder for ``report.md``, ``report.json`` and the figures.
    progress, cancel : callable, optional
        Progress callback and cancel check.
    n_boot, n_folds : int
        Bootstrap resamples for the intervals; cross-validation folds.
    protocols : sequence of str
        Split protocols to compare (``"subject"``, ``"image"``).
    ablation : bool
        Add the backbone / PCA ablation.
    finetune_ablation : bool
        Add frozen vs fine-tuned backbone features on the primary split (fine-tunes both
        backbones: slow on a CPU).

    Returns
    -------
    EvaluationOutput
        Paths of the written report and the results.

    Raises
    ------
    Cancelled
        When ``cancel()`` turns True.
    DataError, ImageReadError
        For unusable data.
    """
    t0 = time.perf_counter()
    config.validate()
    stages = Stages(progress, evaluation_stages(ablation, finetune_ablation))
    dataset = load_config_dataset(config, stages.start("data", f"Reading {Path(config.data).name}"), cancel)
    check_cancel(cancel, "Evaluation was cancelled; nothing was written.")
    stages.say(dataset.summary())
    # every image is a test image in some CV fold: none may be among the fine-tuning images or subjects
    overlap = finetune_overlap(config.weights, dataset.paths, allow=config.allow_finetune_overlap,
                               what="evaluated (held-out and cross-validation test)", groups=dataset.groups,
                               hashes=[s.pixel_hash for s in dataset.samples])
    t = time.perf_counter()
    models = _per_model(dataset, config, protocols, n_boot, n_folds, ablation, stages.start("models"), cancel)
    results = combined_results(models, dataset)
    meta = results["meta"]
    meta["timings_s"] = {"models": time.perf_counter() - t}
    if ablation:
        t = time.perf_counter()
        results["variants"] = _variant_ablation(dataset, config, meta["primary_protocol"], n_folds,
                                                min(n_boot, 1000), stages.start("variants"), cancel)
        meta["timings_s"]["variants"] = time.perf_counter() - t
    if finetune_ablation:
        t = time.perf_counter()
        results["finetune_ablation"] = _finetune_ablation(dataset, config, meta["primary_protocol"],
                                                          stages.start("fine-tune ablation"), cancel)
        meta["timings_s"]["finetune_ablation"] = time.perf_counter() - t
    meta["dataset"] = dataset_meta(config, dataset)
    meta["notes"] = evaluation_notes(config, overlap, finetune_ablation)
    meta["finetune_overlap"] = overlap
    meta["environment"] = environment()
    stages.start("report", "Writing the report")
    meta["timings_s"]["total"] = time.perf_counter() - t0
    paths = write_report(results, out_dir)
    seconds = time.perf_counter() - t0
    stages.done(f"Report written in {seconds:.0f} s")
    return EvaluationOutput(Path(out_dir), paths["json"], paths["markdown"], paths["figures"],
                            results, seconds)


def combined_results(models: dict[str, dict[str, Any]], dataset) -> dict[str, Any]:
    """The report's results: every model's under ``"models"``, the first model's at the top level.

    The top-level ``meta`` counts the whole dataset and ``warnings`` gathers every model's.
    """
    first = next(iter(models.values()))
    results = {**first, "models": models, "meta": dict(first["meta"]),
               "warnings": [w for m in models.values() for w in m["warnings"]]}
    y, groups = dataset.labels, dataset.groups
    results["meta"].update(n=int(len(y)), n_positive=int(y.sum()),
                           n_groups=0 if groups is None else len(set(groups.tolist())))
    return results


def evaluation_stages(ablation: bool, finetune_ablation: bool) -> list[tuple[str, float]]:
    """`run_evaluation`'s stages and their weights (rough shares of a run's time)."""
    # the fine-tune ablation fine-tunes every backbone: the longest stage when it runs
    return [("data", 5), ("models", 85), *([("variants", 7)] if ablation else []),
            *([("fine-tune ablation", 60)] if finetune_ablation else []), ("report", 3)]


def dataset_meta(config: TrainConfig, dataset) -> dict[str, Any]:
    """The report's description of the evaluated data (at most 50 skipped files named)."""
    return {"name": Path(config.data).name, "summary": dataset.summary(),
            "class_counts": dataset.class_counts(),
            "source_class_counts": dataset.source_class_counts(),
            "n_skipped": len(dataset.skipped),
            "skipped": [[Path(p).name, r] for p, r in dataset.skipped][:50]}


def evaluation_notes(config: TrainConfig, overlap: dict[str, Any] | None, finetune_ablation: bool) -> list[str]:
    """The report's notes on fine-tuned weights: which evaluated images they learnt from, and the design caveat.

    ``overlap``: what :func:`trainer.training.weights.finetune_overlap` found (None: nothing recorded).
    """
    notes = []
    if overlap and overlap["n_train"] + overlap["n_validation"]:
        notes.append(
            f"{overlap['n_train'] + overlap['n_validation']} of the {overlap['n_checked']} evaluated "
            f"images were used to fine-tune the backbone weights {overlap['weights']} "
            f"({overlap['n_train']} training, {overlap['n_validation']} validation images); "
            "allowed by --allow-finetune-overlap. Test metrics on them are optimistic.")
    elif overlap:
        notes.append(f"The backbone weights {overlap['weights']} record their fine-tuning "
                     f"images (by {overlap['by']}); none of them, and none of their subjects, is among "
                     "the evaluated images.")
    elif str(config.weights).lower() not in ("none", "imagenet"):
        notes.append(f"The backbone weights {Path(config.weights).name} record no fine-tuning images: "
                     "whether any evaluated image or subject was among them is unknown, so the figures "
                     "may be optimistic.")
    if config.finetune:
        notes.append("Backbone fine-tuning is not repeated per split; the evaluation uses "
                     f"the backbones as configured (weights '{config.weights}').")
    if finetune_ablation or config.finetune or overlap:
        notes.append(
            "Design caveat of fine-tuning: the classifiers are fitted on deep features of images "
            "the CNN was itself trained on, where it separates the classes better than on new "
            "images, so the classifiers and the ensemble weights, calibration and threshold tuned "
            "on them can be over-confident on unseen images.")
    return notes


def environment() -> dict[str, str]:
    """Versions the report's figures were computed with."""
    return {"python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__, "machine": platform.machine()}
