"""Data folders (C-NMC and class-folder layouts, labels.csv) and the seeded splits."""
import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.io.data import detect_layout, load_dataset, parse_cnmc_subject
from trainer.io.samples import Dataset, Sample
from trainer.io.splits import cv_folds, default_protocol, max_folds, split_train_val_test
from trainer.util.errors import DataError


def _img(path, value=100, size=8):
    """A flat image with one pixel set from the path, so that no two files are identical (identical
    images under both labels are left out of a data set)."""
    import zlib
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), value, np.uint8)
    v = zlib.crc32(str(path).encode())
    img[0, 0] = (v & 255, (v >> 8) & 255, (v >> 16) & 255)
    assert cv2.imwrite(str(path), img)
    return path


def _cnmc(root, subjects_all=("1", "2"), subjects_hem=("H1", "H2"), per_subject=2, fold="fold_0"):
    base = root / "training_data" / fold if fold else root
    for s in subjects_all:
        for i in range(per_subject):
            _img(base / "all" / f"UID_{s}_{i + 1}_1_all.bmp", 200)
    for s in subjects_hem:
        for i in range(per_subject):
            _img(base / "hem" / f"UID_{s}_{i + 1}_1_hem.bmp", 50)
    return root


# ------------------------------------------------------------------------------- subject ids

@pytest.mark.parametrize("name, subject", [
    ("UID_11_10_1_all.bmp", "11"),
    ("UID_H10_43_1_hem.bmp", "H10"),
    ("uid_h3_1_2_hem.BMP", "H3"),
    ("some/folder/UID_7_1_12_all.bmp", "7"),
    ("UID_45_2_3_all", "45"),
])
def test_parse_cnmc_subject(name, subject):
    assert parse_cnmc_subject(name) == subject


@pytest.mark.parametrize("name", ["1.bmp", "UID_11_10_all.bmp", "cell_11_10_1_all.bmp",
                                  "UID_X1_1_1_all.bmp", "UID_11_10_1_foo.bmp"])
def test_parse_cnmc_subject_rejects(name):
    with pytest.raises(DataError, match="not a C-NMC file name"):
        parse_cnmc_subject(name)


# ------------------------------------------------------------------------------- C-NMC layout

def test_cnmc_nested_folds(tmp_path):
    _cnmc(tmp_path, ("1", "2"), ("H1",), fold="fold_0")
    _cnmc(tmp_path, ("3",), ("H2", "H3"), fold="fold_2")
    assert detect_layout(tmp_path) == "cnmc"
    ds = load_dataset(tmp_path)
    assert ds.layout == "cnmc" and len(ds) == 12
    assert ds.class_counts() == {"normal": 6, "ALL": 6}
    assert ds.class_names == ("normal", "ALL")
    assert sorted(set(ds.groups)) == ["1", "2", "3", "H1", "H2", "H3"]
    for s in ds:
        assert s.label == (1 if s.path.parent.name == "all" else 0)
        assert s.group == parse_cnmc_subject(s.path.name)
    assert default_protocol(ds.groups) == "subject"


def test_cnmc_flat_folder(tmp_path):
    _cnmc(tmp_path, fold=None)
    ds = load_dataset(tmp_path, layout="cnmc")
    assert len(ds) == 8 and ds.labels.sum() == 4
    assert ds.group_counts() == {"normal": 2, "ALL": 2}


def test_cnmc_unreadable_files_skipped_by_name(tmp_path):
    _cnmc(tmp_path, fold=None)
    (tmp_path / "all" / "UID_9_1_1_all.bmp").write_text("not an image")
    (tmp_path / "hem" / "UID_H9_1_1_hem.bmp").write_bytes(b"")
    (tmp_path / "hem" / "readme.txt").write_text("notes")
    ds = load_dataset(tmp_path, check_readable=True)
    assert len(ds) == 8
    reasons = {p.name: why for p, why in ds.skipped}
    assert set(reasons) == {"UID_9_1_1_all.bmp", "UID_H9_1_1_hem.bmp", "readme.txt"}
    assert "not a readable image" in reasons["UID_9_1_1_all.bmp"]
    assert "empty" in reasons["UID_H9_1_1_hem.bmp"]
    # without the check the text file posing as an image is kept, the empty one is not
    assert len(load_dataset(tmp_path)) == 9


def test_cnmc_check_readable_reports_progress_and_cancels(tmp_path):
    from trainer.util.errors import Cancelled
    _cnmc(tmp_path, fold=None)
    seen = []
    load_dataset(tmp_path, check_readable=True, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0
    with pytest.raises(Cancelled):
        load_dataset(tmp_path, check_readable=True, cancel=lambda: True)


def test_cnmc_one_class_only(tmp_path):
    _cnmc(tmp_path, subjects_hem=(), fold=None)
    with pytest.raises(DataError, match="no 'normal' images"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------------------- class folders

def _folders(root, counts):
    for cls, n in counts.items():
        for i in range(n):
            _img(root / cls / f"{cls}_{i:02d}.png", 30 + 10 * i)
    return root


def test_folders_with_positive_mapping(tmp_path):
    _folders(tmp_path, {"Benign": 3, "Early": 2, "Pre": 2, "Pro": 1})
    assert detect_layout(tmp_path) == "folders"
    ds = load_dataset(tmp_path, positive=["early", "Pre", "PRO"])
    assert ds.class_counts() == {"normal": 3, "ALL": 5}
    assert ds.source_class_counts() == {"Benign": 3, "Early": 2, "Pre": 2, "Pro": 1}
    assert ds.groups is None and default_protocol(ds.groups) == "image"
    assert all((s.class_name == "Benign") == (s.label == 0) for s in ds)
    # comma-separated string works the same
    assert (load_dataset(tmp_path, positive="Early,Pre,Pro").labels == ds.labels).all()


def test_folders_need_a_mapping_unless_names_say_it(tmp_path):
    _folders(tmp_path, {"Benign": 2, "Early": 2})
    with pytest.raises(DataError, match="Benign, Early"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="Late not found"):
        load_dataset(tmp_path, positive=["Late"])
    with pytest.raises(DataError, match="marked positive"):
        load_dataset(tmp_path, positive=["Benign", "Early"])
    named = _folders(tmp_path / "named", {"ALL": 2, "normal": 3})
    assert load_dataset(named).class_counts() == {"normal": 3, "ALL": 2}


def test_folders_labels_csv_with_groups(tmp_path):
    _folders(tmp_path, {"Benign": 4, "Early": 4})
    _img(tmp_path / "Early" / "extra.png")
    rows = [(f"Benign/Benign_{i:02d}.png", "Benign", 0, f"b{i // 2}") for i in range(4)]
    rows += [(f"Early/Early_{i:02d}.png", "Early", 1, f"e{i // 2}") for i in range(4)]
    rows += [("Early/gone.png", "Early", 1, "e9")]
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "label", "group", "md5"])
        w.writerows([r + ("x",) for r in rows])
    ds = load_dataset(tmp_path, positive="Early", group_column="group")
    assert len(ds) == 8 and ds.class_counts() == {"normal": 4, "ALL": 4}
    assert sorted(set(ds.groups)) == ["b0", "b1", "e0", "e1"]
    assert [p.name for p, _ in ds.skipped] == ["gone.png"]
    assert any("not listed" in w for w in ds.warnings)       # extra.png
    # without a mapping the 0/1 label column is used
    assert (load_dataset(tmp_path).labels == ds.labels).all()
    with pytest.raises(DataError, match="Group column 'patient'"):
        load_dataset(tmp_path, positive="Early", group_column="patient")
    # the csv can be ignored: then the folders decide and there are no groups
    plain = load_dataset(tmp_path, positive="Early", labels_csv=False)
    assert len(plain) == 9 and plain.groups is None


def test_cnmc_style_labels_csv_with_text_labels(tmp_path):
    _cnmc(tmp_path, fold=None)
    files = sorted(tmp_path.rglob("*.bmp"))
    with open(tmp_path / "index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["relpath", "label", "subject_id"])
        for f in files:
            rel = f.relative_to(tmp_path).as_posix()
            w.writerow([rel, f.parent.name, parse_cnmc_subject(f.name)])
    ds = load_dataset(tmp_path, layout="folders", labels_csv="index.csv")
    assert len(ds) == 8 and ds.labels.sum() == 4
    assert sorted(set(ds.groups)) == ["1", "2", "H1", "H2"]
    # same answer as the C-NMC layout
    cn = load_dataset(tmp_path, layout="cnmc")
    assert [s.path for s in cn] == [s.path for s in ds]
    assert (cn.labels == ds.labels).all() and list(cn.groups) == list(ds.groups)


def test_unknown_text_labels_in_csv(tmp_path):
    _folders(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "labels.csv").write_text("path,label\na/a_00.png,maybe\nb/b_00.png,hem\n")
    with pytest.raises(DataError, match="maybe"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "No images found"),
    (lambda p: (p / "sub").mkdir() or (p / "sub" / "x.txt").write_text("x"), "No images found"),
    (lambda p: _folders(p, {"Benign": 3}), "Only one class folder.*Benign.*3 images"),
])
def test_empty_and_one_class_folders(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path)


def test_missing_root_and_bad_layout(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="layout"):
        load_dataset(tmp_path, layout="imagenet")


def test_dataset_helpers(tmp_path):
    ds = load_dataset(_cnmc(tmp_path, fold=None))
    sub = ds.subset([0, 5])
    assert isinstance(sub, Dataset) and sub.paths == [ds[0].path, ds[5].path]
    assert "8 images (normal 4, ALL 4), 4 groups" == ds.summary()


# ------------------------------------------------------------------------------- splits

def _grouped(n_groups_per_class=13, per_group=(2, 6), seed=1):
    """Labels and groups like C-NMC: each subject one class, a varying number of cells."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in (0, 1):
        for g in range(n_groups_per_class):
            k = int(rng.integers(*per_group))
            labels += [c] * k
            groups += [f"{'HS'[c]}{g}"] * k
    return np.array(labels), np.array(groups, dtype=object)


def test_image_split_stratified_fractions_and_deterministic():
    y = np.array([0] * 60 + [1] * 140)
    tr, va, te = split_train_val_test(y, protocol="image", seed=3)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(200))
    assert (len(tr), len(va), len(te)) == (140, 30, 30)
    for part, frac in ((tr, 0.7), (va, 0.15), (te, 0.15)):
        assert y[part].sum() == round(140 * frac)            # stratified
    again = split_train_val_test(y, protocol="image", seed=3)
    assert all((a == b).all() for a, b in zip((tr, va, te), again))
    other = split_train_val_test(y, protocol="image", seed=4)
    assert set(other[2].tolist()) != set(te.tolist())


def test_image_split_few_images_per_class():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    parts = split_train_val_test(y, protocol="image")
    assert all(set(y[p]) == {0, 1} for p in parts)
    with pytest.raises(DataError, match="'normal' has 2 image"):
        split_train_val_test(np.array([0, 0, 1, 1, 1]), protocol="image")


def test_subject_split_no_group_on_two_sides_and_close_to_stratified():
    y, g = _grouped(13)
    tr, va, te = split_train_val_test(y, g, protocol="subject", seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(y)))
    sets = [set(g[p]) for p in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # every part first gets 3 subjects of each class (13 allow it), then images are balanced: the image shares
    # come out a little less exact than by images alone, the figures of each part rest on 3 subjects or more
    for part, frac in ((tr, 0.70), (va, 0.15), (te, 0.15)):
        assert set(y[part]) == {0, 1}
        assert all(len(set(g[part][y[part] == c])) >= 3 for c in (0, 1))
        assert abs(len(part) / len(y) - frac) < 0.08
        for c in (0, 1):   # each class spread close to its fractions
            assert abs((y[part] == c).sum() / (y == c).sum() - frac) < 0.1
    again = split_train_val_test(y, g, protocol="subject", seed=0)
    assert all((a == b).all() for a, b in zip((tr, va, te), again))
    assert any(set(g[a]) != set(g[b]) for a, b in
               zip((tr, va, te), split_train_val_test(y, g, protocol="subject", seed=1)))


def test_subject_split_from_samples_and_default_protocol():
    y, g = _grouped(4, (3, 4))
    samples = [Sample(path=None, label=int(c), class_name="x", group=str(s)) for c, s in zip(y, g)]
    tr, va, te = split_train_val_test(samples)             # groups known -> subject level
    assert not set(g[tr]) & set(g[te]) and not set(g[va]) & set(g[te])
    with pytest.raises(DataError, match="only 2 subject"):
        split_train_val_test(*_grouped(2), protocol="subject")
    with pytest.raises(DataError, match="needs a subject or group id"):
        split_train_val_test(y, [None] * len(y), protocol="subject")


def test_split_with_zero_test_share_and_bad_fractions():
    y, g = _grouped(5)
    tr, va, te = split_train_val_test(y, g, fractions=(0.8, 0.2, 0.0))
    assert len(te) == 0 and set(y[va]) == {0, 1}
    with pytest.raises(DataError, match="fractions"):
        split_train_val_test(y, fractions=(0.5, 0.2, 0.2))


def test_cv_folds_image_level_stratified():
    y = np.array([0] * 20 + [1] * 30)
    folds = cv_folds(y, protocol="image", n_splits=5, seed=0)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(50))
    for tr, te in folds:
        assert len(te) == 10 and y[te].sum() == 6 and not set(tr) & set(te)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, cv_folds(y, protocol="image")))
    with pytest.raises(DataError, match="at least 5 images"):
        cv_folds(np.array([0] * 4 + [1] * 10), protocol="image")


def test_cv_folds_grouped():
    y, g = _grouped(13)
    folds = cv_folds(y, g, protocol="subject", n_splits=5, seed=0)
    assert len(folds) == 5
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(y)))
    for tr, te in folds:
        assert not set(g[tr]) & set(g[te])
        assert set(y[te]) == {0, 1} and set(y[tr]) == {0, 1}
    with pytest.raises(DataError, match="only 4 subject.*5 folds"):
        cv_folds(*_grouped(4), protocol="subject", n_splits=5)
    assert max_folds(*_grouped(4), protocol="subject") == 4
    assert len(cv_folds(*_grouped(4), protocol="subject", n_splits=4)) == 4
    assert max_folds(*_grouped(4), protocol="image") >= 8


def test_cv_folds_grouped_mixed_groups_keep_every_class_in_every_fold():
    # groups holding both classes; plain StratifiedGroupKFold leaves a class out of a fold here
    per_group = [(3, 4), (5, 0), (1, 4), (5, 1), (1, 5), (2, 1)]   # (normal, ALL) images
    y = np.concatenate([[0] * a + [1] * b for a, b in per_group])
    g = np.concatenate([[f"p{k}"] * (a + b) for k, (a, b) in enumerate(per_group)])
    folds = cv_folds(y, g, protocol="subject", n_splits=5, seed=0)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(y)))
    for tr, te in folds:
        assert set(y[te]) == {0, 1} and not set(g[tr]) & set(g[te])


def _two_sources():
    """C-NMC-like crops (hem / all, 8 subjects each) and Aria-like fields with few normal subjects
    (Benign, 3 small groups) and 4 ALL (Pre) groups: each source has both classes."""
    from pathlib import Path
    spec = [("hem", 0, 8, 6), ("all", 1, 8, 6), ("Benign", 0, 3, 3), ("Pre", 1, 4, 6)]
    return [Sample(Path(f"{name}{g}_{i}.png"), lab, name, f"{name}-{g}")
            for name, lab, n_groups, per in spec for g in range(n_groups) for i in range(per)]


def test_cv_and_inner_splits_stratified_by_source_class():
    from trainer.config import TrainConfig
    from trainer.evaluation.core import cv_plan
    from trainer.io.splits import one_sided_strata, source_strata
    samples = _two_sources()
    strata = source_strata(samples)
    groups = np.array([s.group for s in samples])
    assert sorted(set(strata)) == ["0:Benign", "0:hem", "1:Pre", "1:all"]
    assert source_strata([s for s in samples if s.class_name in ("hem", "all")]) is None
    n_plans = 0
    for seed in range(6):
        plan, warnings = cv_plan(samples, "subject", 5, TrainConfig(seed=seed))
        for fit, val, te in plan:
            n_plans += 1
            assert not set(groups[np.concatenate([fit, val])]) & set(groups[te])
            assert not set(groups[fit]) & set(groups[val])
            # never a source's images all in validation with none to fit on (label-only
            # stratification did this in 19 of 50 such training folds)
            assert one_sided_strata(strata, fit, val)["only_b"] == []
            for cell in ("0:hem", "1:all", "1:Pre"):  # enough subjects: on both sides
                assert cell in set(strata[fit]) and cell in set(strata[val])
        # 3 Benign subjects cannot reach 5 test folds: said so
        assert any("no normal 'Benign'" in w and "test part" in w for w in warnings)
    assert n_plans == 30
    # image level: every source class with >= 5 images reaches every test fold
    plan, _ = cv_plan(samples, "image", 5, TrainConfig(seed=0))
    for fit, val, te in plan:
        assert set(strata[te]) == set(strata)


def test_split_with_strata_keeps_small_source_classes_in_training():
    from trainer.io.splits import source_strata
    samples = _two_sources()[:-18]  # Pre keeps 1 subject: too few for train, validation and test
    strata = source_strata(samples)
    groups = np.array([s.group for s in samples])
    for seed in range(5):
        tr, va, te = split_train_val_test(samples, protocol="subject", seed=seed, strata=strata)
        assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(samples)))
        assert "1:Pre" in set(strata[tr]) and "1:Pre" not in set(strata[va]) | set(strata[te])
        for part in (tr, va, te):
            assert {"0:hem", "1:all"} <= set(strata[part])
        assert not set(groups[tr]) & set(groups[te]) and not set(groups[va]) & set(groups[te])


def test_one_answer_to_whether_every_sample_has_a_group():
    from trainer.io.samples import Sample, group_ids, sample_groups
    from trainer.io.splits import default_protocol

    assert list(group_ids(["a", "b"])) == ["a", "b"]
    for missing in ([], ["a", None], ["a", ""], ["a", float("nan")], None):
        assert group_ids(missing) is None
        assert default_protocol(missing) == "image"
    s = [Sample(Path("x.png"), 1, "ALL", "s1"), Sample(Path("y.png"), 0, "hem", None)]
    assert sample_groups(s) is None and sample_groups(s[:1]).tolist() == ["s1"]


def test_work_in_chunks_keeps_the_order_and_stops_between_chunks():
    from trainer.util.threads import map_in_chunks

    done = []
    squares = map_in_chunks(lambda x: x * x, list(range(10)), done.append, chunk=4, threads=3)
    assert squares == [x * x for x in range(10)]
    assert done == [0, 4, 8, 10]
    calls = []

    def stop_after_one_chunk(n):
        if n:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        map_in_chunks(calls.append, list(range(10)), stop_after_one_chunk, chunk=4, threads=2)
    assert sorted(calls) == [0, 1, 2, 3]
    assert map_in_chunks(str, [], None) == []
