"""A labelled image set in memory.

:class:`Sample` (one image, its label, subject and class) and :class:`Dataset` (the samples, with the images
skipped while reading and why).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Binary class names, index = label: 0 negative, 1 positive.
CLASS_NAMES: tuple[str, str] = ("normal", "ALL")


def group_ids(groups: Iterable | None) -> np.ndarray | None:
    """(N,) object array of subject/group ids, or None unless every one is known (not None, "" or NaN).

    The one answer to "do all samples have groups?": splits, training and evaluation all ask it here.
    """
    if groups is None:
        return None
    g = list(groups)
    if not g or any(x is None or x == "" or (isinstance(x, float) and np.isnan(x)) for x in g):
        return None
    return np.array(g, dtype=object)


def sample_groups(samples: Iterable) -> np.ndarray | None:
    """:func:`group_ids` of the ``group`` of each sample (objects with a ``group`` attribute)."""
    return group_ids([getattr(s, "group", None) for s in samples])


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``label`` is 0 (normal) or 1 (ALL); ``class_name`` is the class as found in the data
    (folder name or csv class, e.g. ``'hem'`` or ``'Early'``); ``group`` the subject/group id
    or None when unknown; ``pixel_hash`` the SHA-256 of its decoded pixels, where it was read
    (:func:`trainer.io.imageio.pixel_hash`; the same image as BMP and as PNG has one).
    """

    path: Path
    label: int
    class_name: str
    group: str | None = None
    pixel_hash: str | None = None


@dataclass
class Dataset:
    """The images found in a folder, with their labels and groups, and what was left out.

    ``skipped`` lists (path, reason) for every file that was left out, ``warnings`` other
    things worth telling the user (e.g. files without a subject id).
    """

    samples: list[Sample]
    class_names: tuple[str, str] = CLASS_NAMES
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    root: Path | None = None
    layout: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 array of 0/1 labels."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray | None:
        """(N,) object array of group ids, or None unless every sample has one."""
        return sample_groups(self.samples)

    def class_counts(self) -> dict[str, int]:
        """Images per binary class, e.g. ``{'normal': 200, 'ALL': 1000}``."""
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}

    def source_class_counts(self) -> dict[str, int]:
        """Images per class as found in the data (folder or csv class)."""
        return dict(sorted(Counter(s.class_name for s in self.samples).items()))

    def group_counts(self) -> dict[str, int]:
        """Number of distinct groups per binary class (0 where groups are unknown)."""
        out = {}
        for i, name in enumerate(self.class_names):
            out[name] = len({s.group for s in self.samples if s.label == i and s.group})
        return out

    def subset(self, indices: Iterable[int]) -> Dataset:
        """A Dataset with the samples at ``indices`` (same class names, no skipped files)."""
        return Dataset([self.samples[int(i)] for i in indices], self.class_names, [],
                       self.root, self.layout, [])

    def summary(self) -> str:
        """One line for logs and the app, e.g. ``1200 images (normal 200, ALL 1000), 24 groups``."""
        counts = ", ".join(f"{k} {v}" for k, v in self.class_counts().items())
        groups = {s.group for s in self.samples if s.group}
        text = f"{len(self)} images ({counts})"
        if groups:
            text += f", {len(groups)} groups"
        if self.skipped:
            text += f", {len(self.skipped)} files skipped"
        return text
