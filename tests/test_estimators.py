"""The estimators' shared base: declared parameters, the fitted family, padding,
families without means, and the stand-ins used without scikit-learn."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from scipy.special import gammaln, logsumexp, xlogy

import jaxmix
from jaxmix.engine import batch
from jaxmix.estimators.base import (
    COMPONENT_PAD_LIMIT,
    PAD_LIMIT,
    EstimatorBase,
    MixtureEstimator,
    _fit_restarts,
    component_bucket,
    pad_samples,
    padded_size,
)
from jaxmix.estimators.validation import jax_key, precision
from jaxmix.families.bernoulli import Bernoulli
from jaxmix.families.categorical import Categorical
from jaxmix.families.poisson import Poisson, PoissonParams

ESTIMATOR_NAMES = sorted(
    name
    for name in jaxmix._LAZY
    if isinstance(getattr(jaxmix, name), type)
    and issubclass(getattr(jaxmix, name), EstimatorBase)
)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_parameter_is_declared(name):
    # One table of constraints per estimator, covering every __init__ parameter.
    cls = getattr(jaxmix, name)
    assert set(cls._get_param_names()) == set(cls._parameter_constraints)


def test_padded_sizes():
    sizes = {padded_size(n) for n in range(1, PAD_LIMIT + 1)}
    assert min(sizes) == 256 and max(sizes) == PAD_LIMIT
    assert len(sizes) == 2 * 8 + 1  # two per octave from 2^8 to 2^16
    for n in [1, 255, 256, 257, 385, 1000, 40000, PAD_LIMIT]:
        assert n <= padded_size(n) <= max(256, 1.5 * n)
    assert padded_size(PAD_LIMIT + 1) == PAD_LIMIT + 1


@pytest.mark.parametrize("random_state", [0, 1, 12345, np.iinfo(np.int32).max - 1])
def test_estimator_keys_are_jax_keys(random_state):
    # jax_key builds the key data on the host; it must be jax.random.key's.
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max)
    key, reference = jax_key(random_state), jax.random.key(seed)
    assert key.dtype == reference.dtype
    np.testing.assert_array_equal(
        jax.random.key_data(key), jax.random.key_data(reference)
    )
    np.testing.assert_array_equal(
        jax.random.uniform(key, (3,)), jax.random.uniform(reference, (3,))
    )


def test_component_buckets():
    sizes = [component_bucket(k, 100, 2) for k in range(1, 65)]
    assert sorted(set(sizes)) == [8, 12, 16, 24, 32, 48, 64]
    for k, size in enumerate(sizes, start=1):
        assert k <= size <= max(8, 1.5 * k)
    assert component_bucket(3, COMPONENT_PAD_LIMIT // 64, 8) == 8  # N·D² at the limit
    assert component_bucket(3, COMPONENT_PAD_LIMIT // 64 + 1, 8) == 3
    assert component_bucket(3, PAD_LIMIT, 1) == 8
    assert component_bucket(3, PAD_LIMIT + 1, 1) == 3


def _log_density_reference(X, model) -> np.ndarray:
    """log p(x_n) of a fitted full, tied or diag Gaussian mixture, float64 NumPy."""
    shape = (model.n_components, X.shape[1], X.shape[1])
    if model.covariance_type == "diag":
        covariances = np.stack([np.diag(c) for c in model.covariances_])
    else:  # full or tied
        covariances = np.broadcast_to(model.covariances_, shape)
    log_joint = []
    for weight, mean, covariance in zip(
        model.weights_, model.means_, covariances, strict=True
    ):
        diff = X - mean
        _, log_det = np.linalg.slogdet(covariance)
        maha = np.sum(diff * np.linalg.solve(covariance, diff.T).T, axis=1)
        log_joint.append(
            np.log(weight) - 0.5 * (maha + log_det + X.shape[1] * np.log(2 * np.pi))
        )
    return logsumexp(np.stack(log_joint, axis=1), axis=1)


def _assert_equals_own_fit(model, family, data, weights, method):
    """A fitted estimator (``n_init=2``, ``random_state=K``) equals the engine's
    own fit with exactly K components from the same keys, to round-off."""
    n_components = model.n_components
    with precision(data.dtype):  # the estimator's: float64 data, float64 fit
        alone = batch.initialize_and_fit_jit(
            family,
            data,
            jax.random.split(jax_key(n_components), 2),
            model.tol,
            weights,
            None,
            n_components=n_components,
            method=method,
            max_iter=model.max_iter,
        )
    assert model.n_iter_ == int(alone.best.n_iter)
    for name, value in alone.best.params._asdict().items():
        np.testing.assert_allclose(
            getattr(model, f"{name}_"), value, rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(
        model.lower_bound_, float(alone.best.log_likelihood), rtol=1e-12
    )


@pytest.mark.parametrize(
    "covariance_type, init_params, n_features",
    # tied at D = 8: its (D, D) covariance has no component axis though its
    # first axis has the padded K's length.
    [("full", "kmeans", 2), ("tied", "k-means++", 8), ("diag", "random_from_data", 3)],
)
def test_one_program_for_several_n_components(covariance_type, init_params, n_features):
    # Components padded to a bucket and masked: every K up to 8 is one
    # compiled fit, equal to the fit with K components (to round-off).
    rng = np.random.default_rng(4)
    X = rng.normal(size=(180, n_features)) + 4.0 * (np.arange(180) % 3)[:, None]
    data, weights = pad_samples(X)
    family = jaxmix.families.Gaussian(covariance_type)
    programs = []
    for k in (1, 3, 5):
        model = jaxmix.GaussianMixture(
            k,
            covariance_type=covariance_type,
            init_params=init_params,
            n_init=2,
            random_state=k,
        ).fit(X)
        programs.append(_fit_restarts._cache_size())
        if k == 5:
            continue  # the engine's own K = 5 fit would compile again
        _assert_equals_own_fit(model, family, data, weights, init_params)
        np.testing.assert_allclose(
            model.score_samples(X), _log_density_reference(X, model), rtol=1e-10
        )
        assert model.predict_proba(X).shape == (len(X), k)
        if covariance_type == "diag":
            product, identity = model.precisions_ * model.covariances_, 1.0
        else:
            product = model.precisions_ @ model.covariances_
            identity = np.broadcast_to(np.eye(n_features), product.shape)
        np.testing.assert_allclose(product, identity, atol=1e-9)
    assert programs[0] == programs[1] == programs[2]


def _poisson_log_joint(X, model):
    # log π_k + Σ_d x log λ − λ − log x!, float64 NumPy.
    return (
        np.log(model.weights_)
        + X @ np.log(model.rates_).T
        - model.rates_.sum(axis=1)
        - gammaln(X + 1).sum(axis=1, keepdims=True)
    )


def _bernoulli_log_joint(X, model):
    # log π_k + Σ_d x log θ + (1 − x) log(1 − θ), float64 NumPy, 0 · log 0 = 0.
    x, means = X[:, None, :], model.means_[None]
    terms = xlogy(x, means) + xlogy(1 - x, 1 - means)
    return np.log(model.weights_) + terms.sum(axis=-1)


def _categorical_log_joint(X, model):
    # log π_k + Σ_d log θ_{k,d,x_d}, float64 NumPy.
    codes = X.astype(int)
    features = np.arange(X.shape[1])
    with np.errstate(divide="ignore"):  # a level of probability 0: −inf
        return np.log(model.weights_) + np.stack(
            [np.log(probs[features, codes]).sum(axis=1) for probs in model.probs_],
            axis=1,
        )


def _categorical_data(rng):
    levels = np.array([[0, 1, 2], [2, 2, 0], [1, 0, 1]])
    noisy = rng.random((210, 3)) < 0.2
    codes = np.where(noisy, rng.integers(3, size=(210, 3)), levels[np.arange(210) % 3])
    return codes.astype(float)


def _poisson_data(rng):
    rates = np.array([[1.0, 6.0, 2.0], [9.0, 2.0, 0.5], [3.0, 3.0, 7.0]])
    return rng.poisson(rates[np.arange(210) % 3]).astype(float)


def _bernoulli_data(rng):
    means = np.array([[0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.3, 0.7], [0.5, 0.5, 0.9, 0.9]])
    return (rng.random((210, 4)) < means[np.arange(210) % 3]).astype(float)


@pytest.mark.parametrize(
    "estimator, family, make_data, log_joint",
    [
        (
            jaxmix.PoissonMixture,
            Poisson(),
            _poisson_data,
            _poisson_log_joint,
        ),
        (
            functools.partial(jaxmix.BernoulliMixture, init_params="kmeans"),
            Bernoulli(),
            _bernoulli_data,
            _bernoulli_log_joint,
        ),
        (
            functools.partial(jaxmix.CategoricalMixture, init_params="kmeans"),
            Categorical(n_levels=3),
            _categorical_data,
            _categorical_log_joint,
        ),
    ],
    ids=["poisson", "bernoulli", "categorical"],
)
def test_count_mixtures_share_one_program_for_several_n_components(
    estimator, family, make_data, log_joint
):
    # Families without priors mask components too: K = 1, 3 and 5 are one
    # compiled fit, each equal to the engine's own K-component fit.
    X = make_data(np.random.default_rng(5))
    data, weights = pad_samples(X)
    programs = []
    for k in (1, 3, 5):
        model = estimator(k, n_init=2, random_state=k).fit(X)
        programs.append(_fit_restarts._cache_size())
        if k == 5:
            continue  # the engine's own K = 5 fit would compile again
        _assert_equals_own_fit(model, family, data, weights, "kmeans")
        np.testing.assert_allclose(
            model.score_samples(X), logsumexp(log_joint(X, model), axis=1), rtol=1e-10
        )
        assert model.predict_proba(X).shape == (len(X), k)
    assert programs[0] == programs[1] == programs[2]


def blobs(n_samples=150, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    return centres[np.arange(n_samples) % 3] + rng.normal(size=(n_samples, 2))


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random"])
def test_zero_weight_rows_change_nothing(init_params):
    # What padding relies on: rows of weight zero after the data change neither
    # the random start nor the fit (150 and 200 rows share a padded size).
    X = blobs()
    junk = np.random.default_rng(1).normal(50.0, 10.0, size=(50, 2))
    weights = np.r_[np.ones(len(X)), np.zeros(len(junk))]
    model = jaxmix.GaussianMixture(3, init_params=init_params, random_state=0)
    alone = model.fit(X)
    padded = jaxmix.GaussianMixture(3, init_params=init_params, random_state=0).fit(
        np.vstack([X, junk]), sample_weight=weights
    )
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(padded, name), getattr(alone, name), rtol=1e-9, atol=1e-12
        )
    assert padded.n_iter_ == alone.n_iter_


def test_fitted_family_keeps_the_priors():
    X = blobs()
    prior = dict(mean_precision_prior=2.0, covariance_prior=np.eye(2))
    model = jaxmix.GaussianMixture(3, random_state=0, **prior).fit(X)
    np.testing.assert_array_equal(model.family_.mean_prior, X.mean(axis=0))
    assert float(model.family_.mean_precision) == 2.0
    # A model rebuilt from fit_many has the family it was fitted with.
    parts = [X[:75], X[75:]]
    fits = jaxmix.GaussianMixture(3, random_state=0, **prior).fit_many(parts)
    for part, rebuilt in zip(parts, fits, strict=True):
        family = rebuilt.family_
        np.testing.assert_array_equal(family.covariance_prior, np.eye(2))
        assert float(family.mean_precision) == 2.0
        # data-dependent defaults come from all data sets pooled
        np.testing.assert_allclose(family.mean_prior, X.mean(axis=0), rtol=1e-12)
        assert np.all(np.isfinite(rebuilt.score_samples(part)))


class _Counts(MixtureEstimator):
    """A minimal estimator on the Poisson family, whose params have no ``means``."""

    def __init__(
        self,
        n_components=1,
        *,
        tol=1e-3,
        max_iter=100,
        n_init=1,
        init_params="random",
        weights_init=None,
        random_state=None,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.random_state = random_state

    def _make_family(self, X):
        return Poisson()

    def _set_fitted(self, params, dtype):
        self.weights_, self.rates_ = params.weights, params.rates

    def _fitted_params(self):
        return PoissonParams(self.weights_, self.rates_)


def test_base_needs_no_means_field():
    rng = np.random.default_rng(3)
    rates = np.array([[1.0, 8.0, 0.5], [6.0, 1.0, 3.0]])
    X = rng.poisson(rates[np.arange(120) % 2]).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _Counts(2, n_init=2, random_state=0).fit(X)
    assert model.rates_.shape == (2, 3)
    # score_samples against float64 NumPy: log Σ_k π_k Π_d Poisson(x_d; λ_kd).
    log_joint = (
        X @ np.log(model.rates_).T
        - model.rates_.sum(axis=1)
        - gammaln(X + 1).sum(axis=1, keepdims=True)
        + np.log(model.weights_)
    )
    expected = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-10)
    np.testing.assert_array_equal(model.predict(X), log_joint.argmax(axis=1))
    n_parameters = 2 * 3 + 1
    assert model.bic(X) == pytest.approx(
        -2 * expected.sum() + n_parameters * np.log(len(X)), rel=1e-10
    )
    with pytest.raises(ValueError, match="non-negative|counts"):
        model.predict(-X)
    fits = _Counts(2, random_state=0).fit_many([X[:60], X[60:]])
    assert fits.rates_.shape == (2, 2, 3)


def test_bernoulli_binarize_threshold():
    # As scikit-learn's BernoulliNB: features above the threshold are 1.
    X = blobs(120)
    binary = (X > 1.0).astype(np.float64)
    model = jaxmix.BernoulliMixture(2, binarize=1.0, random_state=0).fit(X)
    reference = jaxmix.BernoulliMixture(2, random_state=0).fit(binary)
    np.testing.assert_array_equal(model.means_, reference.means_)
    np.testing.assert_array_equal(
        model.predict_proba(X), reference.predict_proba(binary)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reference.predict(X)


WITHOUT_SKLEARN = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import numpy as np

    class NoScikitLearn(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "sklearn":
                raise ImportError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoScikitLearn())
    import jaxmix
    from jaxmix.estimators import bic_scorer, validation

    out = {"sklearn": validation.SKLEARN, "errors": {}}
    X = np.asarray(json.loads(sys.argv[1]))

    def error(key, call):
        try:
            call()
        except Exception as exception:
            out["errors"][key] = [type(exception).__name__, str(exception)]

    model = jaxmix.GaussianMixture(2, random_state=0, n_init=2)
    out["repr"] = repr(model)
    out["params"] = sorted(model.get_params())
    error("before fit", lambda: model.predict(X))
    model.fit(X.tolist())
    out["means"] = model.means_.tolist()
    out["bic"] = [model.bic(X), -bic_scorer(model, X)]
    error("n_init", lambda: jaxmix.GaussianMixture(n_init=0).fit(X))
    error("covariance_type", lambda: jaxmix.GaussianMixture(covariance_type="x").fit(X))
    error("features", lambda: model.predict(X[:, :1]))
    error("nan", lambda: model.fit(np.where(X > 1, np.nan, X)))
    error("set_params", lambda: model.set_params(bogus=1))
    kmeans = jaxmix.KMeans(2, init=X[:2]).fit(X)
    out["centers"] = kmeans.cluster_centers_.tolist()
    out["names"] = kmeans.get_feature_names_out().tolist()
    import scipy.sparse
    error("sparse", lambda: jaxmix.KMeans(2).fit(scipy.sparse.csr_matrix(X)))
    print(json.dumps(out))
    """
)


def test_works_without_scikit_learn():
    X = blobs(40)
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [env.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_SKLEARN, json.dumps(X.tolist())],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["sklearn"] is False
    assert out["repr"] == "GaussianMixture(n_components=2, n_init=2, random_state=0)"
    assert out["params"] == sorted(jaxmix.GaussianMixture().get_params())
    errors = out["errors"]
    assert errors["before fit"][0] == "NotFittedError"
    assert errors["n_init"][0] == "InvalidParameterError"
    assert "'n_init' parameter of GaussianMixture" in errors["n_init"][1]
    assert "'covariance_type'" in errors["covariance_type"][1]
    assert (
        "X has 1 features, but GaussianMixture is expecting 2"
        in (errors["features"][1])
    )
    assert "NaN" in errors["nan"][1]
    assert errors["set_params"][0] == "ValueError"
    assert errors["sparse"][0] == "TypeError"
    assert out["names"] == ["kmeans0", "kmeans1"]
    # The same fits as with scikit-learn installed: only the checks differ.
    with_sklearn = jaxmix.GaussianMixture(2, random_state=0, n_init=2).fit(X)
    np.testing.assert_allclose(out["means"], with_sklearn.means_, rtol=1e-12)
    assert out["bic"][0] == pytest.approx(with_sklearn.bic(X), rel=1e-12)
    assert out["bic"][1] == out["bic"][0]
    kmeans = jaxmix.KMeans(2, init=X[:2]).fit(X)
    np.testing.assert_allclose(out["centers"], kmeans.cluster_centers_, rtol=1e-12)
