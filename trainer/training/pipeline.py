"""End-to-end training: image folder -> deep features -> fitted, calibrated ensemble -> bundle.

Plain functions in the style of torchvision's reference training script; one
:class:`trainer.config.TrainConfig` drives everything and is stored in the bundle.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.cases.corrections import case_dataset, reviewed_summary
from trainer.classical.model import AllModel, KindModels, fit_model, subset
from trainer.classical.scoring import score_report
from trainer.config import PROTOCOLS, TrainConfig
from trainer.inference.bundle import ModelBundle, save_bundle
from trainer.inference.gradcam import reference_maps
from trainer.inference.probes import REFERENCE_IMAGES, fit_probes, probe_arrays
from trainer.inference.results import MODEL_NAMES
from trainer.io.data import load_dataset, merge_datasets
from trainer.io.imageio import read_image
from trainer.io.samples import Dataset
from trainer.io.splits import source_strata, split_train_val_test
from trainer.training.card import model_card, model_section
from trainer.training.card_facts import group_kind, model_facts, part_facts
from trainer.training.crossval import cv_headline
from trainer.training.distributed import is_main_process
from trainer.training.finetune import finetune_backbones
from trainer.training.provenance import finetune_calibration, finetune_check
from trainer.util import progress as _progress
from trainer.util.errors import DataError
from trainer.util.progress import Progress, Stages
from trainer.util.threads import map_in_chunks
from trainer.vision import fingerprint
from trainer.vision.backbones import build_backbone
from trainer.vision.features import NUCLEUS, FeatureExtractor
from trainer.vision.input_checks import input_check_columns
from trainer.vision.segmentation import KIND_FIELD, KIND_SINGLE, is_single_cell_crop
from trainer.vision.stain import ReinhardNormalizer, lab_stats


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle_path: Path
    model: AllModel
    card: dict[str, Any]                       # the model card stored in the bundle
    metrics: dict[str, Any]                    # test-split metrics per classifier and ensemble
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)  # arrays for plots (first model)
    seconds: float = 0.0
    per_model: dict[str, Any] = field(default_factory=dict)  # test metrics of each per-kind model


#: the one cancel check (:func:`trainer.util.progress.check_cancel`) with training's message
check_cancel = functools.partial(_progress.check_cancel, message="Training was cancelled; nothing was written.")


def load_config_dataset(config: TrainConfig, progress=None, cancel=None,
                        cases_info: list | None = None) -> Dataset:
    """The dataset a config names (one folder, or several merged by subject id), unreadable files skipped.

    Plus the reviewed images of ``config.cases``; what was used of each case is appended to ``cases_info``.
    """
    roots = [config.data] if isinstance(config.data, (str, Path)) else list(config.data or [])
    if not roots or not all(roots):
        raise DataError("No data folder was given.")
    folders = Stages(progress, [(f"folder {i + 1}", 1) for i in range(len(roots))])
    parts = [load_dataset(r, layout=config.layout, positive=config.positive,
                          labels_csv=config.labels_csv if len(roots) == 1 else None,
                          group_column=config.group_column, check_readable=True,
                          progress=folders.start(f"folder {i + 1}"), cancel=cancel)
             for i, r in enumerate(roots)]
    if config.cases:
        reviewed, info = case_dataset(config.cases)
        if cases_info is not None:
            cases_info.extend(info)
        if len(reviewed):
            parts.append(reviewed)
    return merge_datasets(parts)


def make_extractor(config: TrainConfig, state_dicts=None, backbones=None,
                   stain_reference=None) -> FeatureExtractor:
    """The feature extractor a config describes (``backbones``: feature blocks; default the config's networks)."""
    return FeatureExtractor(backbones=tuple(backbones or config.backbones), weights=config.weights,
                            image_size=config.image_size, gamma=config.gamma,
                            batch_size=config.batch_size, num_workers=config.num_workers,
                            device=config.device, cache_dir=config.cache_dir,
                            state_dicts=state_dicts, seed=config.seed, precision=config.precision,
                            stain_reference=stain_reference)


def resolve_protocol(config: TrainConfig, dataset: Dataset) -> str:
    if config.split == "auto":
        return "subject" if dataset.groups is not None else "image"
    if config.split not in PROTOCOLS:
        raise DataError(f"Unknown split protocol '{config.split}'; use subject, image or auto.")
    if config.split == "subject" and dataset.groups is None:
        raise DataError("A subject-level split needs subject or group ids, and this data has none. "
                        "Use --split image, or give a labels.csv with a group column.")
    return config.split


def split_dataset(samples, protocol: str, config: TrainConfig):
    """Train / validation / test indices of a Dataset (or list of Samples), stratified by source class where possible.

    Stratifying on the classes found in the data (e.g. Benign, Early, Pre, Pro, or the data
    sources of a combined set) puts every subtype into every part; when the groups make that
    impossible, the split is stratified on the binary label alone. Training and the evaluation
    report use this same split.
    """
    samples = list(samples)
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples], dtype=object) if protocol == "subject" else None
    kw = dict(protocol=protocol, fractions=tuple(config.fractions), seed=config.seed)
    strata = np.array([f"{s.label}:{getattr(s, 'class_name', '')}" for s in samples])
    if len(set(strata.tolist())) > 2:
        try:
            return split_train_val_test(strata, groups, **kw)
        except DataError:
            pass
    return split_train_val_test(labels, groups, **kw)


def evaluate_split(model: AllModel, feats, y: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, groups=None, unit: str = "subject") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of every classifier and of the ensemble on one split, plus its score arrays.

    The metrics are the evaluation report's :func:`~trainer.classical.scoring.score_report`.

    ``groups`` (len(y),) subject/group ids: AUC intervals resample subjects (``unit``: what a group is),
    else images.
    """
    det = model.predict_details(feats)
    out = score_report(model, det, y, n_boot=n_boot, seed=seed, groups=groups, unit=unit)
    arrays = {"y": np.asarray(y, dtype=np.int64), "raw": det["raw"], "calibrated": det["calibrated"],
              "vote_share": det["vote_share"], "probabilities": det["probabilities"]}
    return out, arrays


MIN_KIND_IMAGES = 2  # per class in each of the training and validation rows of a kind's model


def _image_kind(path) -> str:
    try:
        return KIND_SINGLE if is_single_cell_crop(read_image(path)) else KIND_FIELD
    except Exception:  # unreadable files were reported when the data was read
        return KIND_FIELD


def detect_kinds(paths, progress: Progress | None = None, cancel=None) -> np.ndarray:
    """(N,) str: ``"single_cell"`` or ``"field"`` for each image (unreadable ones: ``"field"``).

    The images are read in a few threads.
    """
    paths = list(paths)

    def between(done: int) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(done / max(len(paths), 1), f"Image kinds: {done}/{len(paths)}")

    return np.array(map_in_chunks(_image_kind, paths, between), dtype=object).astype(str)


def kind_parts(kinds: np.ndarray, y: np.ndarray, splits, per_kind: bool = True) -> tuple[dict, list[str]]:
    """``{model key: (train, val, test) index arrays}`` and notes on kinds left without a model.

    With ``per_kind`` every image kind that has at least ``MIN_KIND_IMAGES`` images of each class
    in its training and validation rows gets its own model; images of a kind too small for
    one are left out of both models, with a note. Without ``per_kind`` (or when no kind
    qualifies) one model (``"any"``) takes every image.
    """
    splits = [np.asarray(a, dtype=int) for a in splits]
    if not per_kind:
        return {"any": tuple(splits)}, []
    parts, notes = {}, []
    for kind in ("single_cell", "field"):
        rows = [a[kinds[a] == kind] for a in splits]
        if sum(len(r) for r in rows) == 0:
            continue
        ok = all(np.sum(y[rows[j]] == c) >= MIN_KIND_IMAGES for j in (0, 1) for c in (0, 1))
        if ok:
            parts[kind] = tuple(rows)
        else:
            notes.append(f"{MODEL_NAMES[kind].capitalize()} not trained: its {sum(len(r) for r in rows)} "
                         f"images have fewer than {MIN_KIND_IMAGES} of each class in the training or "
                         f"validation split; those images are left out.")
    if not parts:
        return {"any": tuple(splits)}, notes
    return parts, notes


def stain_reference(config: TrainConfig, paths, progress=None, cancel=None) -> np.ndarray | None:
    """The Reinhard reference (6,) fitted on ``paths`` (training images), or None without stain normalisation."""
    if config.stain == "none":
        return None
    if config.stain != "reinhard":
        raise DataError(f"Unknown stain normalisation '{config.stain}'; use none or reinhard.")

    stats = []
    for i, p in enumerate(paths):
        if i % 64 == 0:
            check_cancel(cancel)
            if progress is not None:
                progress(i / max(len(paths), 1), f"Stain reference: {i}/{len(paths)} training images")
        stats.append(lab_stats(read_image(p)))
    return ReinhardNormalizer().fit(np.array(stats)).reference_


def feature_blocks(config: TrainConfig) -> tuple[str, ...]:
    """The feature blocks a config asks for: its backbones, plus ``"nucleus"`` where enabled."""
    return tuple(config.backbones) + ((NUCLEUS,) if config.nucleus_features else ())


@dataclass
class TrainData:
    """A training run's data and its one split; every per-kind model takes its rows from it."""

    dataset: Dataset
    protocol: str                                   # "subject" or "image"
    splits: tuple[np.ndarray, np.ndarray, np.ndarray]  # train, validation, test indices into dataset
    provenance: dict[str, Any] | None               # fine-tuning images among these (finetune_check)
    fit_config: TrainConfig                         # the config the classical stage is fitted with
    strata: np.ndarray | None                       # (N,) source strata (source_strata)
    cases_info: list = field(default_factory=list)  # what was used of each reviewed case


@dataclass
class KindFit:
    """One per-kind model as `train` fitted it, with its part of the card and its arrays for the bundle."""

    model: AllModel
    extractor: FeatureExtractor
    section: dict[str, Any]                         # the card's ``models[key]``
    arrays: dict[str, np.ndarray]                   # bundle arrays, named ``"<key>/..."``
    test: tuple[dict[str, Any], dict[str, np.ndarray]]  # test metrics and score arrays (empty without a test split)


#: the steps of one per-kind model and their weights (rough shares of its time on a CPU)
MODEL_STAGES = (("stain reference", 5), ("features", 75), ("classifiers", 6), ("cross-validation", 9),
                ("explanations", 5))


def train_stages(config: TrainConfig) -> list[tuple[str, float]]:
    """`train`'s stages and their weights (rough shares of a run's time)."""
    return [("data", 5), *([("fine-tuning", 45)] if config.finetune else []),
            *([("image kinds", 3)] if config.per_kind else []),
            ("models", 45 if config.finetune else 89), ("saving", 3)]


def train(config: TrainConfig, progress: Progress | None = None,
          cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Train on ``config.data`` and write the bundle to ``config.output`` (atomically).

    With ``config.per_kind`` each image kind (single-cell crops, smear fields) in the data gets
    its own calibrated model on the rows of that kind of one shared subject-level split.

    Parameters
    ----------
    config : TrainConfig
        Everything that determines the run; validated first and stored in the bundle.
    progress : callable, optional
        ``progress(fraction, message)``.
    cancel : callable, optional
        ``cancel() -> bool``, asked between steps.

    Returns
    -------
    TrainResult or None
        The bundle's path, the fitted models, the model card and the test metrics. Under
        ``torchrun`` with ``config.finetune`` every process fine-tunes and only rank 0 goes on;
        the others return None.

    Raises
    ------
    Cancelled
        When ``cancel()`` turns True; nothing is written unless every step succeeds.
    ConfigError, DataError
        For settings or data that cannot work.
    """
    t0 = time.perf_counter()
    config.validate()
    stages = Stages(progress, train_stages(config))
    data = read_training_data(config, stages, cancel)
    state_dicts, finetune_history = None, None
    if config.finetune:
        state_dicts, finetune_history = finetune_on_split(config, data, stages.start("fine-tuning"), cancel)
        if not is_main_process():  # under torchrun only rank 0 builds and saves the model
            return None  # type: ignore[return-value]
    paths = data.dataset.paths
    kinds = (detect_kinds(paths, stages.start("image kinds"), cancel) if config.per_kind
             else np.full(len(paths), "any"))
    parts, notes = kind_parts(kinds, data.dataset.labels, data.splits, config.per_kind)
    for note in notes:
        stages.say(note)
    # each model's share of the bar: its number of images
    models = Stages(stages.start("models"), [(key, max(sum(map(len, rows)), 1)) for key, rows in parts.items()])
    fits = {key: fit_kind_model(key, rows, config, data, state_dicts, models.start(key), cancel)
            for key, rows in parts.items()}
    check_cancel(cancel)
    stages.start("saving", "Saving the model")
    path, kind_model, card = save_model(config, data, fits, (state_dicts, finetune_history), notes,
                                        kinds if config.per_kind else None, cancel)
    seconds = time.perf_counter() - t0
    stages.done(f"Saved {path} in {seconds:.0f} s")
    first = next(iter(fits.values()))
    return TrainResult(bundle_path=path, model=kind_model, card=card, metrics=first.test[0],
                       evaluation=first.test[1], seconds=seconds,
                       per_model={key: fit.test[0] for key, fit in fits.items()})


def read_training_data(config: TrainConfig, stages: Stages, cancel=None) -> TrainData:
    """`train`'s ``"data"`` stage: the dataset, its split and the fine-tuning provenance check."""
    cases_info: list = []
    dataset = load_config_dataset(config, stages.start("data", f"Reading {config.data}"), cancel, cases_info)
    protocol = resolve_protocol(config, dataset)
    splits = tuple(split_dataset(dataset, protocol, config))
    provenance = finetune_check(config, dataset, splits)
    stages.say(f"{dataset.summary()}; {protocol}-level split {'/'.join(str(len(s)) for s in splits)}")
    check_cancel(cancel)
    # fine-tuned features: the classical stage is calibrated on the validation split
    return TrainData(dataset, protocol, splits, provenance, finetune_calibration(config, provenance),
                     source_strata(dataset), cases_info)


def finetune_on_split(config: TrainConfig, data: TrainData, progress=None, cancel=None):
    """``({backbone: state_dict}, {backbone: history})`` fine-tuned on the split's training and validation rows."""
    paths, y = data.dataset.paths, data.dataset.labels
    tr, va, _ = data.splits
    return finetune_backbones([paths[i] for i in tr], y[tr], [paths[i] for i in va], y[va], cfg=config,
                              backbones=config.backbones, device=config.device, progress=progress, cancel=cancel)


def _local(rows) -> tuple[np.ndarray, ...]:
    """Positions of each of ``rows`` (train, validation, test index arrays) in their concatenation."""
    ends = np.cumsum([len(r) for r in rows])
    return tuple(np.arange(end - len(r), end) for r, end in zip(rows, ends))


def fit_kind_model(key: str, rows, config: TrainConfig, data: TrainData, state_dicts=None,
                   progress: Progress | None = None, cancel=None) -> KindFit:
    """Model ``key`` on its (train, validation, test) ``rows`` of the dataset, and its part of the card.

    Stain reference (training rows), features, classifiers, cross-validation headline, validation and
    test metrics, explanation probes with their reference maps (see :data:`MODEL_STAGES`).
    """
    stages = Stages(progress, MODEL_STAGES)
    tr = rows[0]
    paths = data.dataset.paths
    ref = stain_reference(config, [paths[i] for i in tr], stages.start("stain reference"), cancel)
    extractor = make_extractor(config, state_dicts, backbones=feature_blocks(config), stain_reference=ref)
    feats = extractor.extract([paths[i] for i in np.concatenate(rows)], progress=stages.start("features"),
                              cancel=cancel)
    model, cv, val_metrics, (test_metrics, test_arrays) = fit_and_score(key, rows, feats, config, data, stages,
                                                                        cancel)
    arrays, probe_report = explanation_probes(key, rows, feats, extractor, config, data, stages, cancel)
    if ref is not None:
        arrays[f"{key}/stain_reference"] = np.asarray(ref, dtype=np.float64)
    arrays.update({f"{key}/validation/{k}": np.asarray(v) for k, v in model.validation_.items()})
    arrays.update({f"{key}/test/{k}": np.asarray(v) for k, v in test_arrays.items()})
    section = model_section(key, config, rows, data.dataset, model, extractor, val_metrics, test_metrics, ref)
    section["explanation_probes"] = probe_report
    section.update(model_facts(key, model, config, data.dataset.labels, data.dataset.groups, rows), cv=cv)
    return KindFit(model, extractor, section, arrays, (test_metrics, test_arrays))


def fit_and_score(key: str, rows, feats: dict[str, np.ndarray], config: TrainConfig, data: TrainData,
                  stages: Stages, cancel=None):
    """(model, cross-validation headline, validation metrics, (test metrics, test arrays)) of model ``key``.

    ``feats``: ``{block: (N, D)}`` of ``rows``' images, training then validation then test rows.
    """
    tr, va, te = rows
    ltr, lva, lte = _local(rows)
    every = np.concatenate(rows)
    y, groups, blocks = data.dataset.labels, data.dataset.groups, feature_blocks(config)
    g = None if groups is None else groups[every]
    check_cancel(cancel)
    model = fit_model(feats, y[every], ltr, lva, data.fit_config, backbones=blocks,
                      progress=stages.start("classifiers", f"Fitting the {MODEL_NAMES[key]}'s classifiers"),
                      groups=g, domain_columns=input_check_columns(blocks))
    check_cancel(cancel)
    cv = cv_headline(feats, y[every], g, data.fit_config, backbones=blocks, cancel=cancel,
                     strata=None if data.strata is None else data.strata[every], group_kind=group_kind(key, config),
                     domain_columns=input_check_columns(blocks), progress=stages.start("cross-validation"))
    if cv is not None and (data.provenance or {}).get("calibrate_on_validation"):
        cv["notes"].append("The backbones were trained on images of these folds: the figures are optimistic.")
    val_metrics, _ = evaluate_split(model, subset(feats, lva), y[va], n_boot=0, seed=config.seed)
    test = ({}, {})
    if len(te):
        test = evaluate_split(model, subset(feats, lte), y[te], seed=config.seed,
                              groups=None if groups is None else groups[te], unit=group_kind(key, config))
    return model, cv, val_metrics, test


def explanation_probes(key: str, rows, feats: dict[str, np.ndarray], extractor: FeatureExtractor,
                       config: TrainConfig, data: TrainData, stages: Stages, cancel=None):
    """(bundle arrays of model ``key``'s explanation probes and reference maps, the card's probe report).

    One logistic regression per backbone on its own training features; reference maps of up to
    ``REFERENCE_IMAGES`` training images.
    """
    tr, va, _ = rows
    ltr, lva, _ = _local(rows)
    y, paths = data.dataset.labels, data.dataset.paths
    probes, report = fit_probes(subset(feats, ltr), y[tr], config.backbones, subset(feats, lva), y[va],
                                seed=config.seed)
    stages.start("explanations", f"Reference maps of the {MODEL_NAMES[key]}'s explanation probes")
    pick = np.linspace(0, len(tr) - 1, min(REFERENCE_IMAGES, len(tr))).round().astype(int)
    references = reference_maps(extractor, [paths[i] for i in tr[np.unique(pick)]], cancel)
    return dict(probe_arrays(key, probes, references)), report


def save_model(config: TrainConfig, data: TrainData, fits: dict[str, KindFit], finetuned, notes,
               kinds: np.ndarray | None, cancel=None) -> tuple[Path, KindModels, dict[str, Any]]:
    """Write the bundle of the per-kind ``fits`` atomically; returns (its path, the models, the model card).

    ``finetuned``: (fine-tuned state dicts, fine-tuning history), each None without fine-tuning;
    ``kinds`` (N,): each image's detected kind, or None.
    """
    state_dicts, finetune_history = finetuned
    probe = make_extractor(config, state_dicts)  # the networks alone: their fingerprint
    probe.use_networks_of(list(fits.values())[-1].extractor)  # the same networks, already built
    arrays = {name: v for fit in fits.values() for name, v in fit.arrays.items()}
    arrays.update(fingerprint.compute(probe))
    kind_model = KindModels(models={key: fit.model for key, fit in fits.items()})
    card = model_card(config, data.dataset, data.protocol, data.splits, probe,
                      {key: fit.section for key, fit in fits.items()}, finetune_history, notes, kinds=kinds)
    card["split"]["realised"] = part_facts(data.dataset.labels, data.dataset.groups, data.splits)
    card["finetune_provenance"] = data.provenance
    if config.cases:
        card["trained_on"]["reviewed"] = reviewed_summary(data.dataset, data.splits, data.cases_info)
    bundle = ModelBundle(model=kind_model, config=config, card=card, arrays=arrays,
                         backbone_state=_embedded_weights(config, state_dicts))
    check_cancel(cancel)
    return save_bundle(config.resolved_output(), bundle), kind_model, card


def _embedded_weights(config: TrainConfig, state_dicts):
    """Weights the bundle must carry: fine-tuned ones, or a local weights file's."""
    if state_dicts:
        return state_dicts
    if config.weights not in ("none", "imagenet"):
        return {b: build_backbone(b, config.weights).state_dict() for b in config.backbones}
    return None
