"""k-means with FAISS as a scikit-learn estimator (docs/method.md §4: 32 clusters a label).

    km = FaissKMeans(n_clusters=32, n_iter=20, spherical=True, random_state=0).fit(X)
    km.labels_, km.cluster_centers_, km.inertia_, km.predict(Y), km.transform(Y)

A real `BaseEstimator` (+ `ClusterMixin`, `TransformerMixin`): `get_params`, `set_params`,
`clone`, pipelines and `check_estimator` work. The same random_state on the same data gives
the same clustering. With fewer samples than clusters, k is clamped to the number of samples
(`n_clusters_` says what was used).
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data


class FaissKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """Lloyd's k-means on FAISS (CPU), seeded and deterministic.

    Parameters
    ----------
    n_clusters : clusters wanted (clamped to the number of samples at fit).
    n_iter : Lloyd iterations.
    spherical : centroids re-normalised to unit length after each step (for L2-normalised
        features: cosine k-means).
    random_state : int, RandomState or None; seeds FAISS's choice of the initial centroids.
    n_threads : OpenMP threads for this fit/predict (None: FAISS's default, all cores). On a
        small machine shared with other work, 1 can be several times faster than all cores:
        FAISS's threads spin-wait.
    verbose : FAISS's progress output.

    Attributes after `fit`: cluster_centers_ (k, d) float32, labels_ (n,), inertia_ (sum of
    squared distances of the samples to their centroid), n_clusters_ (k actually used),
    n_features_in_.
    """

    _parameter_constraints = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "spherical": ["boolean"],
        "random_state": ["random_state"],
        "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    def __init__(self, n_clusters: int = 32, *, n_iter: int = 20, spherical: bool = True, random_state=0,
                 n_threads: int | None = None, verbose: bool = False):
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.spherical = spherical
        self.random_state = random_state
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

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def fit(self, X, y=None, init_centroids=None) -> "FaissKMeans":
        """Fit on X (n, d). `init_centroids` (k, d) optionally fixes the starting centroids."""
        import faiss

        self._validate_params()
        X = validate_data(self, X, dtype=np.float32, order="C", ensure_min_samples=1)
        n, d = X.shape
        k = int(min(self.n_clusters, n))
        km = faiss.Kmeans(d, k, niter=int(self.n_iter), seed=self._seed(), spherical=bool(self.spherical),
                          verbose=bool(self.verbose), min_points_per_centroid=1,
                          max_points_per_centroid=max(1, -(-n // k)))  # never subsample the data
        init = None
        if init_centroids is not None:
            init = np.ascontiguousarray(init_centroids, dtype=np.float32)
            if init.shape != (k, d):
                raise ValueError(f"init_centroids has shape {init.shape}, expected {(k, d)}")
        with self._threads():
            km.train(np.ascontiguousarray(X), init_centroids=init)
            self.n_clusters_ = k
            self.cluster_centers_ = np.array(km.centroids, dtype=np.float32).reshape(k, d)
            dist, labels = self._search(X)
        self.labels_ = labels
        self.inertia_ = float(dist.astype(np.float64).sum())
        return self

    def _search(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = faiss.IndexFlatL2(self.cluster_centers_.shape[1])  # cheap to build: k rows
        index.add(self.cluster_centers_)
        dist, idx = index.search(np.ascontiguousarray(X, dtype=np.float32), 1)
        return np.maximum(dist[:, 0], 0.0), idx[:, 0].astype(np.int64)

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centroid for each row of X."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        with self._threads():
            return self._search(X)[1]

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        return self.fit(X, **kwargs).labels_

    def transform(self, X) -> np.ndarray:
        """Euclidean distance of each row of X to every centroid, (n, k)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False).astype(np.float64)
        c = self.cluster_centers_.astype(np.float64)
        d2 = (X * X).sum(1)[:, None] - 2.0 * X @ c.T + (c * c).sum(1)[None, :]
        return np.sqrt(np.maximum(d2, 0.0))
