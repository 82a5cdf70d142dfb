"""FaissKMeans: a seeded, validated, scikit-learn-style k-means."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from mining.cluster import FaissKMeans


def _blobs(n_per=40, k=4, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    X = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def test_same_seed_same_clustering():
    X, _ = _blobs(n_per=200, k=8, d=32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    a = FaissKMeans(n_clusters=8, n_iter=15, random_state=7).fit(X)
    b = FaissKMeans(n_clusters=8, n_iter=15, random_state=7).fit(X)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    assert np.array_equal(a.labels_, b.labels_) and a.inertia_ == b.inertia_
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(300, 32)).astype(np.float32)
    c1 = FaissKMeans(5, n_iter=10, random_state=0).fit(noise).cluster_centers_
    c2 = FaissKMeans(5, n_iter=10, random_state=1).fit(noise).cluster_centers_
    assert not np.array_equal(c1, c2)  # the seed is really used
    import faiss

    before = faiss.omp_get_max_threads()
    one = FaissKMeans(n_clusters=8, n_iter=15, random_state=7, n_threads=1).fit(X)
    assert faiss.omp_get_max_threads() == before  # restored
    np.testing.assert_allclose(one.cluster_centers_, a.cluster_centers_, atol=1e-5)


def test_recovers_separated_blobs_and_sklearn_api():
    X, y = _blobs()
    km = FaissKMeans(n_clusters=4, n_iter=20, spherical=False, random_state=0)
    labels = km.fit_predict(X)
    # each true blob maps to exactly one cluster
    assert all(len(set(labels[y == c])) == 1 for c in range(4)) and len(set(labels)) == 4
    assert np.array_equal(km.predict(X), labels)
    d = km.transform(X)
    assert d.shape == (len(X), 4) and np.array_equal(d.argmin(1), labels)
    assert km.inertia_ == pytest.approx(float((d.min(1) ** 2).sum()), rel=1e-4)
    assert km.cluster_centers_.shape == (4, 16) and km.n_clusters_ == 4


def test_spherical_centroids_have_unit_norm():
    X, _ = _blobs()
    km = FaissKMeans(4, n_iter=10, spherical=True).fit(X / np.linalg.norm(X, axis=1, keepdims=True))
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, atol=1e-5)


def test_k_clamped_to_samples_and_inputs_validated():
    X, _ = _blobs(n_per=2, k=2)
    km = FaissKMeans(n_clusters=32).fit(X)
    assert km.n_clusters_ == 4 and km.cluster_centers_.shape == (4, 16)
    with pytest.raises(ValueError, match="Expected 2D array"):
        FaissKMeans(2).fit(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        FaissKMeans(2).fit(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="n_clusters"):
        FaissKMeans(0).fit(X)
    with pytest.raises(ValueError, match="minimum of 1 is required"):
        FaissKMeans(2).fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="features"):
        km.predict(np.zeros((2, 5)))
    with pytest.raises(NotFittedError):
        FaissKMeans(2).predict(X)


def test_scikit_learn_estimator_checks():
    """The full scikit-learn estimator suite: get_params/set_params, clone, fitted state, input validation."""
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import check_estimator

    for est in (FaissKMeans(), FaissKMeans(n_clusters=3, n_iter=5, spherical=False, random_state=1)):
        results = check_estimator(est, on_fail=None)
        failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
        assert len(results) >= 40 and failed == []
    km = FaissKMeans(n_clusters=5, random_state=3)
    assert clone(km).get_params() == km.get_params() == {
        "n_clusters": 5, "n_iter": 20, "spherical": True, "random_state": 3, "n_threads": None, "verbose": False}


def test_given_initial_centroids():
    X, _ = _blobs()
    init = X[[0, 40, 80, 120]]
    km = FaissKMeans(4, n_iter=5, spherical=False).fit(X, init_centroids=init)
    assert len(set(km.labels_)) == 4
    with pytest.raises(ValueError, match="shape"):
        FaissKMeans(4, n_iter=5).fit(X, init_centroids=init[:2])
