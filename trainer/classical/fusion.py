"""Feature-level fusion (paper, Table 2): per-backbone standardisation, concatenation, L2, optional PCA."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from trainer.classical.kinds import join_blocks


class FeatureFusion(TransformerMixin, BaseEstimator):
    """Fuse concatenated backbone embeddings into the classifier input.

    Parameters
    ----------
    dims : tuple of int
        Width of each backbone's block in the input, in order (e.g. ``(1024, 512)``).
    pca : bool
        Apply PCA after the L2 normalisation.
    variance : float
        Fraction of variance PCA keeps (paper: 0.98).
    seed : int
        Random state for PCA's solver.
    block_l2 : bool
        Also L2-normalise each standardised block before concatenation, so every block (e.g.
        a 1024-d network block and an 85-d hand-crafted block) carries the same weight.

    Input ``X`` is (N, sum(dims)); output is (N, D') with D' = sum(dims) or the PCA width.
    Learned: ``scalers_`` (one StandardScaler per block, fitted on the training split),
    ``pca_`` (PCA or None; its ``components_`` in float32), ``n_features_in_``, ``n_components_``.
    """

    def __init__(self, dims: tuple[int, ...] = (1024, 512), pca: bool = True,
                 variance: float = 0.98, seed: int = 0, block_l2: bool = False):
        self.dims = dims
        self.pca = pca
        self.variance = variance
        self.seed = seed
        self.block_l2 = block_l2

    def _blocks(self, X: np.ndarray) -> list[np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != int(sum(self.dims)):
            raise ValueError(f"expected (N, {sum(self.dims)}) features, got {X.shape}")
        edges = np.cumsum((0,) + tuple(self.dims))
        return [X[:, a:b] for a, b in zip(edges[:-1], edges[1:])]

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return join_blocks([s.transform(b) for s, b in zip(self.scalers_, self._blocks(X))],
                           getattr(self, "block_l2", False))

    def fit(self, X, y=None):
        blocks = self._blocks(X)
        self.scalers_ = [StandardScaler().fit(b) for b in blocks]
        self.n_features_in_ = int(sum(self.dims))
        Z = self._scaled(X)
        if self.pca:
            n_max = min(Z.shape) - 1 if min(Z.shape) > 1 else 1
            self.pca_ = PCA(n_components=self.variance if n_max > 1 else 1,
                            svd_solver="full", random_state=self.seed)
            self.pca_.fit(Z)
            # the projection is kept in float32: half the space in a model bundle (the largest part of it);
            # projections differ from float64 ones by float32 rounding, and the classifiers are fitted on
            # these very projections
            self.pca_.components_ = self.pca_.components_.astype(np.float32)
            self.n_components_ = int(self.pca_.n_components_)
        else:
            self.pca_ = None
            self.n_components_ = Z.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "scalers_")
        Z = self._scaled(X)
        return self.pca_.transform(Z) if self.pca_ is not None else Z
