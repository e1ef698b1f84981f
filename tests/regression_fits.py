"""A fixed set of float64 fits through the public API, for before/after comparison.

``python tests/regression_fits.py`` writes ``tests/data/regression_fits.npz`` from
the code as it is; ``tests/test_regression.py`` recomputes the same fits and
compares them with the file (1e-12), so a refactoring that changes any result
fails. The file was written before the family protocol and the layout change.
"""

from __future__ import annotations

import pathlib
import warnings

import jax
import numpy as np

PATH = pathlib.Path(__file__).parent / "data" / "regression_fits.npz"


def _data():
    from sklearn.datasets import load_iris

    import jaxmix.datasets

    faithful, _ = jaxmix.datasets.load_faithful()
    iris = load_iris().data
    rng = np.random.default_rng(7)
    binary = (rng.random((120, 6)) < np.repeat([[0.2], [0.8]], 60, axis=0)).astype(
        float
    )
    return np.asarray(faithful, np.float64), np.asarray(iris, np.float64), binary


def compute() -> dict[str, np.ndarray]:
    import jaxmix
    from jaxmix.families import Bernoulli, Gaussian

    faithful, iris, binary = _data()
    out = {}
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = jax.random.key(3)
        for cov in ("full", "tied", "diag", "spherical"):
            family = Gaussian(cov)
            start = jaxmix.initialize(family, key, iris, 3, method="kmeans")
            result = jaxmix.fit(family, iris, start, max_iter=40, tol=1e-8)
            out[f"fit_{cov}_means"] = np.asarray(result.params.means)
            out[f"fit_{cov}_covariances"] = np.asarray(result.params.covariances)
            out[f"fit_{cov}_ll"] = np.asarray(result.log_likelihood)
        map_family = Gaussian(
            "full",
            weight_concentration=2.0,
            mean_prior=iris.mean(0),
            mean_precision=1.0,
            degrees_of_freedom=5.0,
            covariance_prior=np.cov(iris.T),
        )
        start = jaxmix.initialize(map_family, key, iris, 3, method="random")
        result = jaxmix.fit(map_family, iris, start, max_iter=30, tol=0.0)
        out["map_means"] = np.asarray(result.params.means)
        out["map_covariances"] = np.asarray(result.params.covariances)

        restarts = jaxmix.fit_restarts(Gaussian("diag"), faithful, key, 2, 4)
        out["restarts_means"] = np.asarray(restarts.best.params.means)
        out["restarts_index"] = np.asarray(restarts.best_index)

        stack = np.stack([iris[::2], iris[1::2]])
        many = jaxmix.fit_many(Gaussian("spherical"), stack, key, 2, max_iter=30)
        out["many_means"] = np.asarray(many.params.means)

        sweep = jaxmix.select_n_components(
            Gaussian("full"), faithful, key, 3, covariance_types=("full", "diag")
        )
        out["sweep_bic"] = np.asarray(sweep.bic)

        bern = Bernoulli(mean_prior=(2.0, 2.0), weight_concentration=2.0)
        start = jaxmix.initialize(bern, key, binary, 2, method="random")
        result = jaxmix.fit(bern, binary, start, max_iter=50, tol=0.0)
        out["bernoulli_means"] = np.asarray(result.params.means)

        gm = jaxmix.GaussianMixture(3, covariance_type="full", n_init=2, random_state=0)
        gm.fit(iris)
        out["gm_means"] = gm.means_
        out["gm_precisions_cholesky"] = gm.precisions_cholesky_
        bm = jaxmix.BernoulliMixture(2, n_init=2, random_state=0).fit(binary)
        out["bm_means"] = bm.means_
        km = jaxmix.KMeans(3, n_init=3, random_state=0).fit(iris)
        out["km_centers"] = km.cluster_centers_
        out["km_inertia"] = np.asarray(km.inertia_)
        kmed = jaxmix.KMedians(3, n_init=2, random_state=0).fit(iris)
        out["kmed_centers"] = kmed.cluster_centers_

        start = jaxmix.initialize(Gaussian("diag"), key, faithful, 2)
        params, trace = jaxmix.fit_gradient(Gaussian("diag"), faithful, start, steps=20)
        out["gradient_means"] = np.asarray(params.means)
    return out


if __name__ == "__main__":
    PATH.parent.mkdir(exist_ok=True)
    np.savez(PATH, **compute())
    print(f"wrote {PATH}")
