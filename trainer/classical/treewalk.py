"""Fitted decision trees as flat numpy arrays, walked for all trees at once (numpy only).

The probabilities are scikit-learn's, number for number: the rows in float32 are compared with float64
thresholds (left when ``<=``) and the sums run in scikit-learn's order. Used by
:mod:`trainer.classical.treeread` (on fitted estimators) and :mod:`trainer.classical.readout` (on the
arrays of a saved model, without scikit-learn).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Trees:
    """The nodes of fitted decision trees in flat arrays; children are indices into them.

    Built from one ``(children_left, children_right, feature, threshold, value)`` tuple per tree, the
    arrays of scikit-learn's ``tree_`` (``value`` (nodes, n_classes), a leaf's children -1). A leaf is
    its own child, so walking ``depth`` steps from the roots ends on every row's leaf. Raises ValueError
    for arrays that do not describe trees over ``n_features`` features.
    """

    def __init__(self, trees: Sequence[tuple], n_features: int) -> None:
        sizes = [len(t[0]) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        left, right, feature, threshold, value = [], [], [], [], []
        for (cl, cr, feat, thr, val), off, n in zip(trees, offsets, sizes):
            cl, cr, feat = (np.asarray(a, dtype=np.intp) for a in (cl, cr, feat))
            leaf = cl == -1
            if (n == 0 or not (len(cr) == len(feat) == len(thr) == len(val) == n)
                    or not np.array_equal(leaf, cr == -1)
                    or np.any((cl[~leaf] <= np.flatnonzero(~leaf)) | (cl[~leaf] >= n))
                    or np.any((cr[~leaf] <= np.flatnonzero(~leaf)) | (cr[~leaf] >= n))
                    or np.any((feat[~leaf] < 0) | (feat[~leaf] >= n_features))):
                raise ValueError("not a fitted decision tree")
            own = np.arange(n, dtype=np.intp) + off
            left.append(np.where(leaf, own, cl + off))
            right.append(np.where(leaf, own, cr + off))
            feature.append(np.where(leaf, 0, feat))
            threshold.append(np.asarray(thr, dtype=np.float64))
            value.append(np.asarray(val, dtype=np.float64))
        self.roots = offsets
        self.left = np.concatenate(left)
        self.right = np.concatenate(right)
        self.feature = np.concatenate(feature)
        self.threshold = np.concatenate(threshold)
        self.value = np.concatenate(value)          # (nodes, n_classes)
        self.depth = _depth(self.left, self.right)

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """(N, T) node index of the leaf each row reaches in each tree; ``X`` (N, D) float32."""
        node = np.broadcast_to(self.roots, (len(X), len(self.roots))).copy()
        rows = np.arange(len(X))[:, None]
        for _ in range(self.depth):
            go_left = X[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def leaf_values(self, X) -> np.ndarray:
        """(N, T, n_classes) the leaf value each row reaches in each tree."""
        return self.value[self.leaves(np.asarray(X, dtype=np.float32))]


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Edges on the longest root-to-leaf path of trees whose leaves are their own children.

    One numpy step per level: each node's depth is pushed to its children until nothing changes
    (children always follow their parent, so this ends).
    """
    own = np.arange(len(left))
    inner = own[left != own]
    depth = np.zeros(len(left), dtype=np.intp)
    for _ in range(len(left)):
        new = depth.copy()
        new[left[inner]] = depth[inner] + 1
        new[right[inner]] = depth[inner] + 1
        if np.array_equal(new, depth):
            break
        depth = new
    return int(depth.max())


def forest_proba(values: np.ndarray) -> np.ndarray:
    """(N, C) RandomForestClassifier probabilities from (N, T, C) leaf values: summed in tree order, / T."""
    return np.cumsum(values, axis=1)[:, -1] / values.shape[1]


def samme_proba(values: np.ndarray, classes: np.ndarray, weights: np.ndarray, weight_sum: float) -> np.ndarray:
    """(N, 2) binary AdaBoost (SAMME) probabilities from (N, T, 2) leaf values.

    Each stump votes for its argmax class with its weight ``weights`` (T,); ``weight_sum`` is the sum of
    all the estimator weights, as scikit-learn divides by it.
    """
    other = (-1 / (len(classes) - 1)) * weights        # the weight of a vote for another class
    vote = classes.take(np.argmax(values, axis=2))      # (N, T)
    terms = np.where(vote[:, :, None] == classes[None, None, :], weights[None, :, None], other[None, :, None])
    pred = np.cumsum(terms, axis=1)[:, -1]              # (N, C), summed in estimator order
    pred /= weight_sum
    pred[:, 0] *= -1
    decision = pred.sum(axis=1)
    return softmax(np.vstack([-decision, decision]).T / 2)


def softmax(X: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) ``X`` in place, as ``sklearn.utils.extmath.softmax`` computes it."""
    X -= np.max(X, axis=1).reshape(-1, 1)
    np.exp(X, out=X)
    X /= np.sum(X, axis=1).reshape(-1, 1)
    return X
