"""k-means with FAISS behind a scikit-learn-style estimator (METHOD.md §4: 32 clusters a label).

    km = FaissKMeans(n_clusters=32, n_iter=20, spherical=True, seed=0).fit(X)
    km.labels_, km.cluster_centers_, km.inertia_, km.predict(Y), km.transform(Y)

The same seed on the same data gives the same clustering. With fewer samples than clusters,
k is clamped to the number of samples (`n_clusters_` says what was used).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def _check_array(X, name: str = "X", d: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one sample and one feature, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has {X.shape[1]} features, but the model was fitted with {d}")
    return X


class FaissKMeans:
    """Lloyd's k-means on FAISS (CPU), seeded and deterministic.

    Parameters
    ----------
    n_clusters : clusters wanted (clamped to the number of samples at fit).
    n_iter : Lloyd iterations.
    spherical : centroids re-normalised to unit length after each step (for L2-normalised
        features: cosine k-means).
    seed : seeds FAISS's random choice of the initial centroids.
    n_threads : OpenMP threads for this fit/predict (None: FAISS's default, all cores). On a
        small machine shared with other work, 1 can be several times faster than all cores:
        FAISS's threads spin-wait.

    Attributes after `fit`: cluster_centers_ (k, d) float32, labels_ (n,), inertia_ (sum of
    squared distances of the samples to their centroid), n_clusters_ (k actually used).
    """

    def __init__(self, n_clusters: int = 32, n_iter: int = 20, spherical: bool = True, seed: int = 0,
                 n_threads: int | None = None, verbose: bool = False):
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.spherical = spherical
        self.seed = seed
        self.n_threads = n_threads
        self.verbose = verbose

    @contextmanager
    def _threads(self):
        import faiss

        if self.n_threads is None:
            yield
            return
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(self.n_threads))
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def _validate_params(self):
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {self.n_clusters!r}")
        if not isinstance(self.n_iter, (int, np.integer)) or self.n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer, got {self.n_iter!r}")
        if self.n_threads is not None and (not isinstance(self.n_threads, (int, np.integer)) or self.n_threads < 1):
            raise ValueError(f"n_threads must be None or a positive integer, got {self.n_threads!r}")

    def fit(self, X, y=None, init_centroids=None) -> "FaissKMeans":
        """Fit on X (n, d). `init_centroids` (k, d) optionally fixes the starting centroids."""
        import faiss

        self._validate_params()
        X = _check_array(X)
        n, d = X.shape
        k = int(min(self.n_clusters, n))
        km = faiss.Kmeans(d, k, niter=int(self.n_iter), seed=int(self.seed), spherical=bool(self.spherical),
                          verbose=self.verbose, min_points_per_centroid=1,
                          max_points_per_centroid=max(1, -(-n // k)))  # never subsample the data
        init = None
        if init_centroids is not None:
            init = _check_array(init_centroids, "init_centroids", d)
            if init.shape[0] != k:
                raise ValueError(f"init_centroids has {init.shape[0]} rows, expected {k}")
        with self._threads():
            km.train(X, init_centroids=init)
            self.n_clusters_ = k
            self.n_features_in_ = d
            self.cluster_centers_ = np.array(km.centroids, dtype=np.float32).reshape(k, d)
            self._index = None
            dist, labels = self._search(X)
        self.labels_ = labels
        self.inertia_ = float(dist.astype(np.float64).sum())
        return self

    def _search(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._index is None:
            self._index = faiss.IndexFlatL2(self.n_features_in_)
            self._index.add(self.cluster_centers_)
        dist, idx = self._index.search(X, 1)
        return np.maximum(dist[:, 0], 0.0), idx[:, 0].astype(np.int64)

    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this FaissKMeans is not fitted yet; call fit(X) first")

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centroid for each row of X."""
        self._check_fitted()
        X = _check_array(X, d=self.n_features_in_)
        with self._threads():
            return self._search(X)[1]

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def transform(self, X) -> np.ndarray:
        """Euclidean distance of each row of X to every centroid, (n, k)."""
        self._check_fitted()
        X = _check_array(X, d=self.n_features_in_)
        c = self.cluster_centers_
        d2 = (X * X).sum(1)[:, None] - 2.0 * X @ c.T + (c * c).sum(1)[None, :]
        return np.sqrt(np.maximum(d2, 0.0))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_index"] = None  # FAISS indexes are rebuilt on demand
        return state

    def __repr__(self) -> str:
        return (f"FaissKMeans(n_clusters={self.n_clusters}, n_iter={self.n_iter}, "
                f"spherical={self.spherical}, seed={self.seed}, n_threads={self.n_threads})")
