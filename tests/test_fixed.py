"""Fixed parameters: the constrained M-step, the fit, the checker and the estimator.

References: a float64 NumPy EM with fixed parameters written here from the
plain formulas, the autodiff checker (:func:`jaxmix.check.check_m_step`), and
identities (fixed entries bit for bit, nothing fixed, everything fixed,
monotone objective).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmix
from jaxmix.engine import em
from jaxmix.families import Bernoulli, Gaussian, GaussianParams, StudentT
from jaxmix.families.fixed import fixed_mask

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
N, D, K = 90, 2, 3
REG = 1e-6


@pytest.fixture(autouse=True)
def _float64(x64):
    yield


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    return np.concatenate([c + rng.normal(size=(N // K, D)) for c in centers])


X = _data()


def _start(covariance_type: str) -> GaussianParams:
    """A deterministic start whose component 0 mean is a 'known' value."""
    means = np.array([[0.5, -0.5], [3.0, 2.0], [2.0, 4.0]])
    full = np.array([[[1.5, 0.3], [0.3, 1.0]], [[1.0, -0.2], [-0.2, 2.0]], np.eye(2)])
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.array([[1.5, 1.0], [1.0, 2.0], [1.0, 1.0]]),
        "spherical": np.array([1.2, 1.5, 1.0]),
    }[covariance_type]
    return GaussianParams(np.array([0.2, 0.45, 0.35]), means, covariances)


# -- NumPy reference ------------------------------------------------------------


def _full_covariances(covariance_type, covariances):
    eye = np.eye(D)
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (K, D, D))
    if covariance_type == "diag":
        return covariances[:, :, None] * eye
    return covariances[:, None, None] * eye


def _responsibilities(covariance_type, params):
    weights, means, covariances = params
    log_prob = np.empty((len(X), K))
    for k, cov in enumerate(_full_covariances(covariance_type, covariances)):
        diff = X - means[k]
        maha = np.einsum("nd,nd->n", diff, np.linalg.solve(cov, diff.T).T)
        log_det = np.linalg.slogdet(cov)[1]
        log_prob[:, k] = np.log(weights[k]) - 0.5 * (
            D * np.log(2 * np.pi) + log_det + maha
        )
    log_norm = np.logaddexp.reduce(log_prob, axis=1)
    return np.exp(log_prob - log_norm[:, None])


def _reference_m_step(covariance_type, resp, params, fixed):
    """The constrained ML M-step from the plain formulas (float64 NumPy)."""
    weights, means, covariances = (np.asarray(p) for p in params)
    counts = resp.sum(axis=0)
    free_mass = 1 - weights[fixed.weights].sum()
    new_weights = np.where(
        fixed.weights, weights, free_mass * counts / counts[~fixed.weights].sum()
    )
    new_means = np.where(fixed.means, means, resp.T @ X / counts[:, None])
    # Every covariance centred at its component's (new) mean.
    scatter = np.stack(
        [
            np.einsum("n,nd,ne->de", resp[:, k], X - new_means[k], X - new_means[k])
            for k in range(K)
        ]
    )
    per_component = scatter / counts[:, None, None]
    diagonal = np.diagonal(per_component, axis1=1, axis2=2)
    new_cov = {
        "full": per_component + REG * np.eye(D),
        "tied": scatter.sum(axis=0) / counts.sum() + REG * np.eye(D),
        "diag": diagonal + REG,
        "spherical": diagonal.mean(axis=1) + REG,
    }[covariance_type]
    new_cov = np.where(fixed.covariances, covariances, new_cov)
    return GaussianParams(new_weights, new_means, new_cov)


def _reference_em(covariance_type, params, fixed, n_iter):
    params = GaussianParams(*(np.asarray(p, np.float64) for p in params))
    fixed = jax.tree.map(np.asarray, fixed)
    for _ in range(n_iter):
        resp = _responsibilities(covariance_type, params)
        params = _reference_m_step(covariance_type, resp, params, fixed)
    return params


# Per covariance type: fixed weights and means of some components, and a
# fixed covariance (the whole tied one; diag: single entries).
FIXED = {
    "full": {"weights": [True, False, False], "means": [True, False, True]},
    "tied": {"weights": [False, True, False], "means": [True, False, False]},
    "diag": {
        "means": np.array([[True, False], [False, False], [False, True]]),
        "covariances": np.array([[False, False], [True, False], [False, False]]),
    },
    "spherical": {
        "weights": [True, False, True],
        "means": [False, True, False],
        "covariances": [True, False, False],
    },
}


@pytest.fixture(scope="module")
def fits():
    """One constrained fit per covariance type (and its family, start, mask)."""
    out = {}
    with jax.enable_x64(True):
        for covariance_type in COVARIANCE_TYPES:
            family = Gaussian(covariance_type, reg_covar=REG)
            start = _start(covariance_type)
            result = jaxmix.fit(
                family, X, start, max_iter=8, tol=0.0, fixed=FIXED[covariance_type]
            )
            mask = fixed_mask(family, start, FIXED[covariance_type])
            out[covariance_type] = (family, start, mask, result)
    return out


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_matches_numpy_reference(fits, covariance_type):
    _, start, mask, result = fits[covariance_type]
    n_iter = int(result.n_iter)
    assert n_iter == 8
    expected = _reference_em(covariance_type, start, mask, n_iter)
    for name in GaussianParams._fields:
        np.testing.assert_allclose(
            getattr(result.params, name), getattr(expected, name), rtol=1e-9
        )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fixed_entries_bit_for_bit_and_monotone(fits, covariance_type):
    _, start, mask, result = fits[covariance_type]
    for name in GaussianParams._fields:
        held = np.asarray(getattr(mask, name))
        got = np.asarray(getattr(result.params, name))
        np.testing.assert_array_equal(got[held], np.asarray(getattr(start, name))[held])
    np.testing.assert_allclose(np.sum(result.params.weights), 1.0, rtol=1e-12)
    trace = np.asarray(result.trace)[: int(result.n_iter)]
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_fixing_nothing_is_the_plain_fit():
    family = Gaussian("full", reg_covar=REG)
    start = _start("full")
    plain = jaxmix.fit(family, X, start, max_iter=8, tol=0.0)
    nothing = jaxmix.fit(family, X, start, max_iter=8, tol=0.0, fixed={})
    again = jaxmix.fit(family, X, start, max_iter=8, tol=0.0, fixed=None)
    for a, b, c in zip(plain.params, nothing.params, again.params):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_fixing_everything_keeps_the_start():
    family = Gaussian("tied", reg_covar=REG)
    start = _start("tied")
    result = jaxmix.fit(
        family, X, start, max_iter=5, fixed=("weights", "means", "covariances")
    )
    for a, b in zip(result.params, start):
        np.testing.assert_array_equal(a, b)


def test_new_mask_does_not_recompile():
    family = Gaussian("diag", reg_covar=REG)
    start = _start("diag")
    jaxmix.fit(family, X, start, max_iter=4, fixed={"means": [True, False, False]})
    size = em._fit_jit._cache_size()
    masks = [{"weights": [False, True, True]}, {"covariances": True}, ["means"]]
    for fixed in masks:
        jaxmix.fit(family, X, start, max_iter=4, fixed=fixed)
    assert em._fit_jit._cache_size() == size


def test_map_m_step_matches_formulas():
    """Constrained MAP (Dirichlet and normal-inverse-Wishart), full covariances."""
    m0, kappa, nu, psi = np.array([1.0, 2.0]), 0.7, 3.0, 0.5 * np.eye(D)
    alpha = np.array([2.0, 1.5, 3.0])
    family = Gaussian(
        "full",
        reg_covar=0.0,
        weight_concentration=alpha,
        mean_prior=m0,
        mean_precision=kappa,
        degrees_of_freedom=nu,
        covariance_prior=psi,
    )
    start = _start("full")
    fixed = {"weights": [False, False, True], "means": [True, False, False]}
    resp = _responsibilities("full", start)
    mask = fixed_mask(family, start, fixed)
    got = em.m_step(family, jnp.asarray(X), jnp.asarray(resp), None, start, mask)
    counts = resp.sum(axis=0)
    shifted = counts + alpha - 1
    weights = (1 - start.weights[2]) * shifted / shifted[:2].sum()
    weights[2] = start.weights[2]
    means = (resp.T @ X + kappa * m0) / (counts + kappa)[:, None]
    means[0] = start.means[0]
    for k in range(K):
        diff = X - means[k]
        scatter = np.einsum("n,nd,ne->de", resp[:, k], diff, diff)
        pull = kappa * np.outer(means[k] - m0, means[k] - m0)
        expected = (psi + scatter + pull) / (nu + counts[k] + D + 2)
        np.testing.assert_allclose(got.covariances[k], expected, rtol=1e-10)
    np.testing.assert_allclose(got.weights, weights, rtol=1e-12)
    np.testing.assert_allclose(got.means, means, rtol=1e-12)


# -- the checker ----------------------------------------------------------------

PSI = {"full": 0.5 * np.eye(D), "tied": 0.5 * np.eye(D), "diag": np.full(D, 0.5)}
PSI["spherical"] = 0.5


def _map_family(covariance_type):
    return Gaussian(
        covariance_type,
        weight_concentration=np.array([2.0, 1.5, 3.0]),
        mean_prior=np.array([1.0, 2.0]),
        mean_precision=0.7,
        degrees_of_freedom=3.0,
        covariance_prior=PSI[covariance_type],
    )


CHECKED = [
    ("full", False, FIXED["full"]),
    ("spherical", False, FIXED["spherical"]),
    ("tied", True, {"means": [True, False, False], "weights": [True, False, False]}),
    ("diag", True, {**FIXED["diag"], "weights": [False, True, False]}),
]


@pytest.mark.parametrize(("covariance_type", "map_prior", "fixed"), CHECKED)
def test_constrained_m_step_passes_the_checker(covariance_type, map_prior, fixed):
    family = _map_family(covariance_type) if map_prior else Gaussian(covariance_type)
    report = jaxmix.check.check_m_step(
        family, X[:45], fixed=fixed, maximize_steps=0, n_perturbations=2
    )
    assert report.ok, str(report)
    assert "fixed)" in str(report)


def _centred_at_sample_mean(fixed_means):
    """A wrong constrained M-step: covariances around x̄_k, not the fixed means."""

    def m_step(X, resp):
        counts = resp.sum(axis=0)
        sample_means = resp.T @ X / counts[:, None]
        centred = X[None] - sample_means[:, None]
        covariances = np.einsum("nk,knd,kne->kde", resp, centred, centred)
        means = np.where(fixed_means[:, None], PARAMS.means, sample_means)
        return {
            "weights": counts / counts.sum(),
            "means": means,
            "covariances": covariances / counts[:, None, None],
        }

    return m_step


PARAMS = _start("full")


def test_checker_names_a_covariance_not_centred_at_the_fixed_mean():
    fixed_means = np.array([True, False, False])
    report = jaxmix.check.check_m_step(
        Gaussian("full"),
        X[:45],
        _centred_at_sample_mean(fixed_means),
        params=PARAMS,
        fixed={"means": fixed_means},
        maximize_steps=0,
        n_perturbations=2,
    )
    assert not report.ok
    assert report.failed == ("covariances",)
    assert report["covariances"].status == "not stationary"
    assert report["covariances"].worst_component == 0
    assert "covariances  FAILED" in str(report)


def test_checker_fails_an_m_step_that_moves_a_fixed_entry():
    report = jaxmix.check.check_m_step(
        Gaussian("full"),
        X[:45],
        _centred_at_sample_mean(np.array([False, False, False])),
        params=PARAMS,
        fixed={"means": [True, False, False]},
        maximize_steps=0,
        n_perturbations=2,
    )
    assert not report.ok
    assert report["means"].status == "changed a fixed entry"


def test_bernoulli_fixed_means():
    rng = np.random.default_rng(1)
    binary = (rng.random((60, 4)) < np.linspace(0.2, 0.8, 4)).astype(float)
    family = Bernoulli(mean_prior=(2.0, 2.0))
    fixed = {"means": np.array([[True, False, False, True]] + [[False] * 4] * 2)}
    report = jaxmix.check.check_m_step(
        family, binary, fixed=fixed, maximize_steps=0, n_perturbations=2
    )
    assert report.ok, str(report)
    start = jaxmix.initialize(family, jax.random.key(0), binary, 3)
    result = jaxmix.fit(family, binary, start, max_iter=20, fixed=fixed)
    held = fixed["means"]
    np.testing.assert_array_equal(result.params.means[held], start.means[held])


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "fixed", "message"),
    [
        (Gaussian("full"), {"means": np.eye(K, D, dtype=bool)}, "as a whole"),
        (Gaussian("tied"), {"covariances": np.eye(D, dtype=bool)}, "as a whole"),
        (Gaussian("tied"), {"covariances": [True, False, True]}, "a boolean or"),
        (Gaussian("full"), {"mean": True}, "unknown field"),
        (Gaussian("full"), {"means": np.ones(K)}, "boolean"),
        (Gaussian("full"), 3, "fixed must be"),
    ],
)
def test_bad_masks(family, fixed, message):
    start = _start(family.covariance_type)
    with pytest.raises(ValueError, match=message):
        jaxmix.fit(family, X, start, fixed=fixed)


def test_coupled_field_of_another_family_raises():
    family = StudentT("full")
    start = jaxmix.initialize(family, jax.random.key(0), X, 2)
    with pytest.raises(ValueError, match="StudentT cannot hold 'means' fixed"):
        jaxmix.fit(family, X, start, fixed={"means": [True, False]})


def test_restarts_keep_the_fixed_values():
    family = Gaussian("full", reg_covar=REG)
    means = _start("full").means
    result = jaxmix.fit_restarts(
        family,
        X,
        jax.random.key(0),
        K,
        3,
        max_iter=10,
        init={"means": means},
        fixed={"means": [True, False, True]},
    )
    got = np.asarray(result.all.params.means)
    np.testing.assert_array_equal(
        got[:, [0, 2]], np.broadcast_to(means[[0, 2]], (3, 2, D))
    )
    with pytest.raises(ValueError, match="init gives no value"):
        jaxmix.fit_restarts(family, X, jax.random.key(0), K, 2, fixed=["weights"])


# -- the estimator --------------------------------------------------------------


def test_estimator_fixed_params():
    start = _start("diag")
    model = jaxmix.GaussianMixture(
        K,
        covariance_type="diag",
        weights_init=start.weights,
        means_init=start.means,
        precisions_init=1 / start.covariances,
        fixed_params={
            "weights": [True, False, False],
            "precisions": [False, True, False],
        },
        n_init=2,
        random_state=0,
    ).fit(X)
    assert model.weights_[0] == start.weights[0]
    np.testing.assert_array_equal(model.covariances_[1], 1 / (1 / start.covariances[1]))
    assert not np.array_equal(model.means_, start.means)
    means_only = jaxmix.GaussianMixture(
        K, means_init=start.means, fixed_params=["means"], random_state=0
    ).fit(X)
    np.testing.assert_array_equal(means_only.means_, start.means)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fixed_params": ["means"]}, "means_init is None"),
        ({"fixed_params": ["covariances"]}, "can fix"),
        ({"fixed_params": 1.5}, "fixed_params must be"),
    ],
)
def test_estimator_bad_fixed_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxmix.GaussianMixture(K, **kwargs).fit(X)


def test_estimator_partial_fit_refuses_fixed_params():
    model = jaxmix.GaussianMixture(
        K, means_init=_start("full").means, fixed_params="means"
    )
    with pytest.raises(ValueError, match="partial_fit"):
        model.partial_fit(X)
