"""Autodiff checks of E- and M-steps, and gradient fitting.

Right M-steps, written in plain NumPy, must pass; plausible mistakes must fail
and name the wrong field. The checker's own gradients are compared with
gradients of Q derived by hand. One data set shape throughout, to compile little.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmix
from jaxmix import check
from jaxmix.engine.gradient import fit_gradient
from jaxmix.families import Bernoulli, Gaussian, GaussianParams

K = 3


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    scales = np.array([[1.0, 0.5], [0.5, 0.5], [0.7, 1.2]])
    X = centres[:, None] + scales[:, None] * rng.normal(size=(3, 40, 2))
    return X.reshape(-1, 2)


X = make_data()
N, D = X.shape


# ---------------------------------------------------------------------------
# NumPy M-steps: the right ones and plausible mistakes
# ---------------------------------------------------------------------------


def scatter(X, resp, means):
    """Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ, (K, D, D)."""
    centred = X[None] - means[:, None]
    return np.einsum("nk,knd,kne->kde", resp, centred, centred)


def basic(X, resp, means=None):
    counts = resp.sum(0)
    if means is None:
        means = resp.T @ X / counts[:, None]
    return counts, counts / len(X), means


def full_right(X, resp, means=None):
    counts, weights, means = basic(X, resp, means)
    covariances = scatter(X, resp, means) / counts[:, None, None]
    return {"weights": weights, "means": means, "covariances": covariances}


def tied_right(X, resp, means=None):
    _, weights, means = basic(X, resp, means)
    covariances = scatter(X, resp, means).sum(0) / len(X)
    return {"weights": weights, "means": means, "covariances": covariances}


def diag_right(X, resp, means=None):
    counts, weights, means = basic(X, resp, means)
    variances = np.einsum("kdd->kd", scatter(X, resp, means)) / counts[:, None]
    return {"weights": weights, "means": means, "covariances": variances}


def spherical_right(X, resp, means=None):
    out = diag_right(X, resp, means)
    return {**out, "covariances": out["covariances"].mean(1)}


RIGHT = {
    "full": full_right,
    "tied": tied_right,
    "diag": diag_right,
    "spherical": spherical_right,
}


def replace(m_step, **changes):
    """An M-step whose fields are recomputed by ``change(X, resp, right_output)``.

    A wrong ``means`` is passed on to the other fields (a covariance computed
    around the returned means), as a user's derivation would.
    """

    def wrong(X, resp):
        out = m_step(X, resp)
        if "means" in changes:
            out = m_step(X, resp, means=changes["means"](X, resp, out))
        return {**out, **{name: f(X, resp, out) for name, f in changes.items()}}

    return wrong


def full_cov_by_n(X, resp, out):
    return scatter(X, resp, out["means"]) / len(X)


def full_cov_uncentred(X, resp, out):
    counts = resp.sum(0)
    return np.einsum("nk,nd,ne->kde", resp, X, X) / counts[:, None, None]


def full_cov_seed(X, resp, out):
    # The seed derivation's Σ_k = (1/r_k) Σ_i r_ik x_i x_iᵀ − r_k μ_k μ_kᵀ.
    counts = resp.sum(0)
    means = out["means"]
    outer = np.einsum("kd,ke->kde", means, means)
    return full_cov_uncentred(X, resp, out) - counts[:, None, None] * outer


def full_cov_unbiased(X, resp, out):
    counts = resp.sum(0)
    return scatter(X, resp, out["means"]) / (counts - 1)[:, None, None]


def full_cov_ridge(X, resp, out):
    return out["covariances"] + 1e-3 * np.eye(X.shape[1])


def weights_laplace(X, resp, out):
    return (resp.sum(0) + 1) / (len(X) + resp.shape[1])


def weights_not_normalised(X, resp, out):
    return resp.sum(0) / (len(X) + resp.shape[1])


def means_by_n(X, resp, out):
    return resp.T @ X / len(X)


def tied_mean_of_covariances(X, resp, out):
    counts = resp.sum(0)
    return (scatter(X, resp, out["means"]) / counts[:, None, None]).mean(0)


def tied_sum_of_covariances(X, resp, out):
    counts = resp.sum(0)
    return (scatter(X, resp, out["means"]) / counts[:, None, None]).sum(0)


def diag_uncentred(X, resp, out):
    return resp.T @ np.square(X) / resp.sum(0)[:, None]


def diag_std(X, resp, out):
    return np.sqrt(out["covariances"])


def spherical_sum(X, resp, out):
    return out["covariances"] * X.shape[1]


def spherical_by_n(X, resp, out):
    return out["covariances"] * resp.sum(0) / len(X)


WRONG = [
    ("full", "covariances normalised by N", {"covariances": full_cov_by_n}),
    ("full", "mean not subtracted", {"covariances": full_cov_uncentred}),
    ("full", "seed formula − r_k μ_k μ_kᵀ", {"covariances": full_cov_seed}),
    ("full", "unbiased N_k − 1", {"covariances": full_cov_unbiased}),
    ("full", "ridge added", {"covariances": full_cov_ridge}),
    ("full", "weights with +1 smoothing", {"weights": weights_laplace}),
    ("full", "weights not normalised", {"weights": weights_not_normalised}),
    ("full", "means normalised by N", {"means": means_by_n}),
    (
        "tied",
        "mean of per-component covariances",
        {"covariances": tied_mean_of_covariances},
    ),
    (
        "tied",
        "sum of per-component covariances",
        {"covariances": tied_sum_of_covariances},
    ),
    ("tied", "weights with +1 smoothing", {"weights": weights_laplace}),
    ("diag", "mean not subtracted", {"covariances": diag_uncentred}),
    ("diag", "standard deviation, not variance", {"covariances": diag_std}),
    ("diag", "means normalised by N", {"means": means_by_n}),
    ("spherical", "summed over features", {"covariances": spherical_sum}),
    ("spherical", "variance normalised by N", {"covariances": spherical_by_n}),
]

# L-BFGS costs a compilation per covariance type; run it on two of them.
STEPS = {"full": 50, "tied": 0, "diag": 50, "spherical": 0}


@pytest.mark.parametrize("covariance_type", list(RIGHT))
def test_right_numpy_m_step_passes(covariance_type):
    report = check.check_m_step(
        Gaussian(covariance_type),
        X,
        RIGHT[covariance_type],
        maximize_steps=STEPS[covariance_type],
    )
    assert report.ok, str(report)
    assert report.failed == ()
    assert "FAILED" not in str(report)
    for field in report.fields.values():
        assert field.relative_gap < 1e-10


@pytest.mark.parametrize(
    ("covariance_type", "mistake", "changes"),
    WRONG,
    ids=[f"{c}-{m}" for c, m, _ in WRONG],
)
def test_wrong_m_step_fails_naming_the_field(covariance_type, mistake, changes):
    m_step = replace(RIGHT[covariance_type], **changes)
    report = check.check_m_step(
        Gaussian(covariance_type), X, m_step, maximize_steps=STEPS[covariance_type]
    )
    assert not report.ok
    assert report.failed == tuple(changes), str(report)
    text = str(report)
    for name in report.fields:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name))
        assert ("FAILED" in line) == (name in changes), text
    if STEPS[covariance_type]:
        # Any wrong field leaves room for the optimizer.
        assert report.optimizer_gain > report.objective_tol


def test_seed_formula_is_reported_as_not_positive_definite():
    m_step = replace(full_right, covariances=full_cov_seed)
    report = check.check_m_step(Gaussian("full"), X, m_step, maximize_steps=50)
    assert report["covariances"].status == "infeasible"
    assert "positive definite" in str(report)


def test_ridge_gap_is_proportional_to_the_ridge():
    gaps = []
    for ridge in (1e-3, 1e-2):
        m_step = replace(
            full_right,
            covariances=lambda X, r, out, ridge=ridge: (
                out["covariances"] + ridge * np.eye(D)
            ),
        )
        report = check.check_m_step(Gaussian("full"), X, m_step, maximize_steps=50)
        gaps.append(report["covariances"].relative_gap)
    np.testing.assert_allclose(gaps[1] / gaps[0], 10, rtol=0.05)


def test_fixed_fields_are_not_checked_but_must_not_change():
    family = Gaussian("spherical", variance=0.5)

    def means_only(X, resp):
        return {
            "means": resp.T @ X / resp.sum(0)[:, None],
            "weights": resp.sum(0) / len(X),
        }

    report = check.check_m_step(family, X, means_only, maximize_steps=0)
    assert report.ok, str(report)
    assert report["covariances"].status == "fixed"
    assert "covariances  fixed" in str(report)
    assert check.check_m_step(family, X, maximize_steps=0).ok

    changed = check.check_m_step(family, X, spherical_right, maximize_steps=0)
    assert changed.failed == ("covariances",)
    assert changed["covariances"].status == "changed a fixed field"


def test_uniform_weights_family():
    family = Gaussian("diag", uniform_weights=True)
    assert check.check_m_step(family, X, maximize_steps=0).ok

    def learned_weights(X, resp):
        return diag_right(X, resp)  # returns N_k / N, not the fixed 1/K

    assert check.check_m_step(family, X, learned_weights, maximize_steps=0).failed == (
        "weights",
    )

    def fixed_weights(X, resp):
        return {k: v for k, v in diag_right(X, resp).items() if k != "weights"}

    assert check.check_m_step(family, X, fixed_weights, maximize_steps=0).ok


def test_m_step_may_return_params_and_bad_output_is_rejected():
    def as_params(X, resp):
        return GaussianParams(**full_right(X, resp))

    assert check.check_m_step(Gaussian("full"), X, as_params, maximize_steps=50).ok
    with pytest.raises(ValueError, match="unknown field"):
        check.check_m_step(
            Gaussian("full"), X, lambda X, r: {**full_right(X, r), "precisions": 1.0}
        )
    with pytest.raises(ValueError, match="did not return 'covariances'"):
        check.check_m_step(
            Gaussian("full"),
            X,
            lambda X, r: {"weights": r.mean(0), "means": r.T @ X / r.sum(0)[:, None]},
        )
    with pytest.raises(ValueError, match="shape"):
        check.check_m_step(
            Gaussian("full"), X, lambda X, r: {**full_right(X, r), "means": X[:2]}
        )
    with pytest.raises(ValueError, match="NaN"):
        check.check_m_step(Gaussian("full"), np.where(X > 2, np.nan, X))


# ---------------------------------------------------------------------------
# Mixture of Bernoullis, with and without priors
# ---------------------------------------------------------------------------


def make_binary(seed=1):
    """Binary data; feature 0 is always 0 and feature 1 always 1 (ML means 0, 1)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.choice([0.1, 0.5, 0.9], size=(3, 6))
    prototypes[:, 0], prototypes[:, 1] = 0.0, 1.0
    labels = rng.choice(3, size=N)
    return (rng.random((N, 6)) < prototypes[labels]).astype(np.float64)


XB = make_binary()
ALPHA, A, B = 2.0, 2.0, 3.0


def bernoulli_map(X, resp, weight_shift=1.0, mean_shift=1.0):
    """π_k = (N_k + α − 1)/(N + Kα − K), θ_kd = (Σ r x + a − 1)/(N_k + a + b − 2)."""
    counts = resp.sum(0)
    n_components = resp.shape[1]
    weights = (counts + ALPHA - weight_shift) / (
        len(X) + n_components * (ALPHA - weight_shift)
    )
    means = (resp.T @ X + A - mean_shift) / (counts[:, None] + A + B - 2 * mean_shift)
    return {"weights": weights, "means": means}


BERNOULLI_WRONG = [
    (
        "prior mean instead of mode",
        lambda X, r: bernoulli_map(X, r, mean_shift=0.0),
        ("means",),
    ),
    (
        "Dirichlet mean instead of mode",
        lambda X, r: bernoulli_map(X, r, weight_shift=0.0),
        ("weights",),
    ),
    (
        "Beta prior ignored",
        lambda X, r: {**bernoulli_map(X, r), "means": r.T @ X / r.sum(0)[:, None]},
        ("means",),
    ),
    (
        "means normalised by N",
        lambda X, r: {
            **bernoulli_map(X, r),
            "means": (r.T @ X + A - 1) / (len(X) + A + B - 2),
        },
        ("means",),
    ),
]


def test_bernoulli_map_m_steps():
    family = Bernoulli(weight_concentration=ALPHA, mean_prior=(A, B))
    report = check.check_m_step(family, XB, bernoulli_map, maximize_steps=50)
    assert report.ok, str(report)
    assert check.check_m_step(family, XB, maximize_steps=50).ok
    for mistake, m_step, failed in BERNOULLI_WRONG:
        report = check.check_m_step(family, XB, m_step, maximize_steps=50)
        assert report.failed == failed, (mistake, str(report))
        assert report.optimizer_gain > report.objective_tol, mistake


def test_bernoulli_maximum_likelihood_with_means_at_zero_and_one():
    report = check.check_m_step(Bernoulli(), XB, maximize_steps=0)
    assert report.ok, str(report)
    np.testing.assert_allclose(report.params.means[:, :2], [[0, 1]] * K, atol=1e-12)
    outside = check.check_m_step(
        Bernoulli(),
        XB,
        lambda X, r: {"weights": r.mean(0), "means": r.T @ X / r.sum(0)[:, None] * 1.2},
        maximize_steps=0,
    )
    assert outside["means"].status == "infeasible"
    assert "outside [0, 1]" in str(outside)


# ---------------------------------------------------------------------------
# The checker's gradients against gradients of Q derived by hand
# ---------------------------------------------------------------------------


def start_params(covariance_type):
    """A fixed θ_old; resp are computed from it in NumPy, independently."""
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[2.5, 0.5], [0.5, -0.5], [0.0, 2.0]])
    cov = np.array(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.6]], [[0.8, -0.2], [-0.2, 1.5]]]
    )
    covariances = {"full": cov, "spherical": np.array([0.9, 0.4, 1.1])}[covariance_type]
    return GaussianParams(weights, means, covariances)


def numpy_responsibilities(params, full_covariances):
    log_joint = np.empty((N, K))
    for k in range(K):
        centred = X - params.means[k]
        cov = full_covariances[k]
        maha = np.einsum("nd,de,ne->n", centred, np.linalg.inv(cov), centred)
        log_joint[:, k] = (
            np.log(params.weights[k])
            - 0.5 * maha
            - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        )
    log_joint -= log_joint.max(1, keepdims=True)
    resp = np.exp(log_joint)
    return resp / resp.sum(1, keepdims=True)


def some_theta():
    """An arbitrary feasible θ, returned by a 'M-step' that ignores its input."""
    weights = np.array([0.2, 0.45, 0.35])
    means = np.array([[2.0, 0.0], [0.3, 0.1], [-0.2, 2.5]])
    return weights, means


def test_gradients_match_hand_derivation_spherical():
    params = start_params("spherical")
    resp = numpy_responsibilities(params, params.covariances[:, None, None] * np.eye(D))
    weights, means = some_theta()
    variances = np.array([1.3, 0.6, 0.8])

    report = check.check_m_step(
        Gaussian("spherical"),
        X,
        lambda X, r: {"weights": weights, "means": means, "covariances": variances},
        params=params,
        maximize_steps=0,
    )
    counts = resp.sum(0)
    scale = X.std(0)
    sq = np.square(X[:, None] - means[None]).sum(-1)  # (N, K)
    # softmax coordinates: ∂Q/∂u_k = N_k − N π_k
    expected_weights = counts - N * weights
    # μ = s ⊙ u: ∂Q/∂u_kd = s_d Σ_n r_nk (x_nd − μ_kd) / σ²_k
    expected_means = scale * (resp.T @ X - counts[:, None] * means) / variances[:, None]
    # σ² = c e^v: ∂Q/∂v_k = Σ_n r_nk (‖x_n − μ_k‖² / (2σ²_k) − D/2)
    expected_cov = (resp * sq).sum(0) / (2 * variances) - D / 2 * counts
    for name, expected in [
        ("weights", expected_weights),
        ("means", expected_means),
        ("covariances", expected_cov),
    ]:
        np.testing.assert_allclose(
            report[name].gradient, expected, rtol=1e-9, atol=1e-9 * N
        )
        np.testing.assert_allclose(
            report[name].relative_gap, np.linalg.norm(expected) / N, rtol=1e-9
        )
    assert report.failed == ("weights", "means", "covariances")


def test_gradients_match_hand_derivation_full():
    params = start_params("full")
    resp = numpy_responsibilities(params, params.covariances)
    weights, means = some_theta()
    covariances = np.array(
        [[[1.2, 0.1], [0.1, 0.3]], [[0.5, -0.1], [-0.1, 0.4]], [[0.7, 0.0], [0.0, 1.1]]]
    )
    report = check.check_m_step(
        Gaussian("full"),
        X,
        lambda X, r: {"weights": weights, "means": means, "covariances": covariances},
        params=params,
        maximize_steps=50,
    )
    scale = X.std(0)
    counts = resp.sum(0)
    expected = np.zeros((K, D, D))
    for k in range(K):
        # ∂Q/∂Σ = ½ Σ⁻¹ (S_k − N_k Σ) Σ⁻¹ with S_k the scatter around μ_k;
        # Σ = L Lᵀ gives ∂Q/∂L = 2 (∂Q/∂Σ) L; L = diag(s) L̃ gives ∂Q/∂L̃ =
        # diag(s) ∂Q/∂L; the diagonal coordinate is log L̃_ii (chain rule × L̃_ii).
        inv = np.linalg.inv(covariances[k])
        centred = X - means[k]
        S = (resp[:, k, None] * centred).T @ centred
        dq_dsigma = 0.5 * inv @ (S - counts[k] * covariances[k]) @ inv
        lower = np.linalg.cholesky(covariances[k])
        dq_dunit = scale[:, None] * (2 * dq_dsigma @ lower)
        unit = lower / scale[:, None]
        grad = np.tril(dq_dunit, -1)
        grad[np.diag_indices(D)] = np.diag(dq_dunit) * np.diag(unit)
        expected[k] = grad
    np.testing.assert_allclose(
        report["covariances"].gradient, expected, rtol=1e-9, atol=1e-9 * N
    )
    expected_means = np.stack(
        [
            scale
            * (np.linalg.inv(covariances[k]) @ (resp[:, k] @ X - counts[k] * means[k]))
            for k in range(K)
        ]
    )
    np.testing.assert_allclose(report["means"].gradient, expected_means, rtol=1e-9)
    assert report.optimizer_gain > 0.01


def test_perturbations_rise_only_away_from_the_maximum():
    right = check.check_m_step(Gaussian("diag"), X, diag_right, maximize_steps=50)
    assert all(f.perturbation_gain <= 0 for f in right.fields.values())
    wrong = check.check_m_step(
        Gaussian("diag"), X, replace(diag_right, means=means_by_n), maximize_steps=50
    )
    assert wrong["means"].perturbation_gain > 0


# ---------------------------------------------------------------------------
# E-step and Fisher's identity
# ---------------------------------------------------------------------------


def test_e_step_check():
    params = start_params("full")
    family = Gaussian("full")
    assert check.check_e_step(family, params, X).ok

    def numpy_e_step(params, X):
        return numpy_responsibilities(params, params.covariances)

    assert check.check_e_step(family, params, X, numpy_e_step).ok

    def no_weights(params, X):
        return numpy_responsibilities(
            params._replace(weights=np.ones(K) / K), params.covariances
        )

    report = check.check_e_step(family, params, X, no_weights)
    assert not report.ok and report.max_error > 1e-3
    assert report.row_sum_error < 1e-12

    def unnormalised(params, X):
        return numpy_e_step(params, X) * 1.01

    report = check.check_e_step(family, params, X, unnormalised)
    assert not report.ok
    np.testing.assert_allclose(report.row_sum_error, 0.01, rtol=1e-9)
    assert "FAILED" in str(report)


def test_fisher_identity():
    params = start_params("full")
    family = Gaussian("full")
    report = check.check_fisher_identity(family, params, X)
    assert report.ok, str(report)
    assert all(norm > 1e-3 for norm in report.gradient_norms.values())

    def tempered(params, X):
        resp = numpy_responsibilities(params, params.covariances) ** 2
        return resp / resp.sum(1, keepdims=True)

    report = check.check_fisher_identity(family, params, X, tempered)
    assert not report.ok
    assert "FAILED" in str(report)


# ---------------------------------------------------------------------------
# Monotonicity
# ---------------------------------------------------------------------------


def test_check_monotone():
    nan = np.nan
    assert check.check_monotone([-3.0, -2.0, -2.0, -1.0, nan, nan]).ok
    report = check.check_monotone([-3.0, -2.0, -2.5, -1.0, nan])
    assert not report.ok and report.iteration == 1
    np.testing.assert_allclose(report.largest_decrease, 0.5)
    assert not check.check_monotone([-3.0, nan, -2.0]).ok
    # Round-off is tolerated, relative to the objective's size.
    assert check.check_monotone([-1000.0, -1000.0 - 1e-12]).ok
    assert not check.check_monotone([-1000.0, -1000.0 - 1e-9]).ok
    # A batch: the failing row is reported.
    batch = np.array([[-3.0, -2.0, nan], [-3.0, -3.5, -3.0]])
    assert check.check_monotone(batch).iteration == 0
    assert not check.check_monotone(batch).ok


# ---------------------------------------------------------------------------
# Gradient fitting
# ---------------------------------------------------------------------------


def numpy_mean_log_likelihood(params):
    log_joint = np.empty((N, K))
    for k in range(K):
        centred = X - params.means[k]
        cov = params.covariances[k]
        maha = np.einsum("nd,de,ne->n", centred, np.linalg.inv(cov), centred)
        log_joint[:, k] = (
            np.log(params.weights[k])
            - 0.5 * maha
            - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        )
    top = log_joint.max(1)
    return np.mean(top + np.log(np.exp(log_joint - top[:, None]).sum(1)))


@pytest.fixture(scope="module")
def em_fit():
    with jax.enable_x64(True):
        family = Gaussian("full", reg_covar=0.0)
        start = GaussianParams(*(jnp.asarray(a) for a in start_params("full")))
        result = jaxmix.fit(family, jnp.asarray(X), start, max_iter=500, tol=1e-13)
        return family, start, result


def test_fitted_trace_is_monotone(em_fit):
    _, _, result = em_fit
    report = check.check_monotone(result)
    assert report.ok, str(report)
    assert report.n_iter == int(result.n_iter) > 5


def test_fit_gradient_reaches_the_em_optimum(em_fit):
    family, start, result = em_fit
    params, trace = fit_gradient(
        family, jnp.asarray(X), start, optimizer=optax.lbfgs(), steps=100
    )
    assert trace.shape == (100,)
    np.testing.assert_allclose(trace[0], numpy_mean_log_likelihood(start), rtol=1e-12)
    final = numpy_mean_log_likelihood(jax.tree.map(np.asarray, params))
    np.testing.assert_allclose(final, result.log_likelihood, rtol=0, atol=1e-9)
    np.testing.assert_allclose(params.means, result.params.means, atol=1e-4)


def test_fit_gradient_default_adam_climbs_and_keeps_fixed_fields():
    family = Gaussian("full", uniform_weights=True)
    start = GaussianParams(*(jnp.asarray(a) for a in start_params("full")))
    start = start._replace(weights=jnp.full((K,), 1.0 / K))
    params, trace = fit_gradient(family, jnp.asarray(X), start, steps=200)
    assert trace[-1] > trace[0] + 0.05
    np.testing.assert_array_equal(params.weights, start.weights)
    with pytest.raises(ValueError, match="steps"):
        fit_gradient(family, jnp.asarray(X), start, steps=0)
