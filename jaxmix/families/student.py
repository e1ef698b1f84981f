r"""Mixture of multivariate Student-t distributions (Peel & McLachlan, 2000).

Each component k is a multivariate t distribution with location μ_k, scale
matrix Σ_k and ν_k degrees of freedom:

.. math::
    \log t(x \mid μ_k, Σ_k, ν_k) = \log Γ\big(\tfrac{ν_k + D}{2}\big)
        − \log Γ\big(\tfrac{ν_k}{2}\big) − \tfrac{D}{2} \log(π ν_k)
        − \tfrac12 \log |Σ_k| − \tfrac{ν_k + D}{2} \log\big(1 + δ_k(x) / ν_k\big),

with the squared Mahalanobis distance :math:`δ_k(x) = (x − μ_k)ᵀ Σ_k^{−1}
(x − μ_k)`. Its covariance is Σ_k ν_k / (ν_k − 2) for ν_k > 2; as ν_k → ∞ it
becomes the Gaussian N(μ_k, Σ_k). The scale matrices have the Gaussian
family's covariance types (``full``, ``tied``, ``diag``, ``spherical``) and
shapes, and reuse its kernels (:mod:`jaxmix.families.covariance_kernels`):
Cholesky factors of the precisions, the Mahalanobis term and centred second
moments.

**EM.** A t variable is a Gaussian scale mixture: x | τ ~ N(μ_k, Σ_k / τ) with
τ ~ Gamma(ν_k/2, rate ν_k/2). Given x_n in component k, τ has mean

.. math::
    u_{nk} = E[τ \mid x_n] = \frac{ν_k + D}{ν_k + δ_{nk}},

so a far sample (large δ) weighs little in the next location and scale: the
fit is robust to outliers. The M-step (ECM, Peel & McLachlan 2000; Liu &
Rubin 1995) weighs the means and scatter by :math:`r_{nk} u_{nk}` and solves
a one-dimensional equation for each ν_k (see :meth:`StudentT.m_step`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from jaxmix.families import charts, covariance_kernels
from jaxmix.families.base import Family, static
from jaxmix.families.gaussian import Gaussian
from jaxmix.families.mixing import guarded_counts, update_weights

Array = jax.Array

#: Default bounds of the learned degrees of freedom. Below 0.5 the tails are
#: heavier than any data set needs (ν = 1 is the Cauchy distribution). Data
#: without heavy tails has its maximum at ν = ∞ (the Gaussian): the log density
#: differs from its limit by h(δ)/ν with h = (δ² − 2(D + 2)δ + D(D + 2))/4,
#: whose mean under light tails is near zero, so at 1e10 the rest of the way
#: changes the mean log-likelihood by far less than 1e-10, the autodiff
#: checker's tolerance for a maximum (at 1e4 it would not).
DOF_BOUNDS = (0.5, 1e10)

# Safeguarded Newton steps of the ν equation of the M-step (see ``solve_dof``).
# In log ν the equation is nearly linear (log g(ν/2) ≈ −log ν + const): from the
# asymptotic start, two steps reach 1e-11 and three float64 round-off for every
# root between 0.5 and 1e10 (float32: 3e-6); the rest is margin for bisection.
_NEWTON_STEPS = 6
# Iterations of the weighted fit in ``StudentT.reference`` (an upper bound: it
# stops earlier once the parameters stop moving), and Newton steps on ν in
# each of them.
_REFERENCE_ITERATIONS = 200
_REFERENCE_DOF_STEPS = 3
# Switch points from direct formulas to asymptotic series (see the helpers).
_SERIES_FROM = 12.0
_LOG1P_SERIES_BELOW = 1e-2
_LOG_2PI = math.log(2 * math.pi)


class StudentTParams(NamedTuple):
    """Parameters of a mixture of multivariate t distributions."""

    weights: Array  # (K,)
    means: Array  # (K, D)  locations μ_k
    covariances: Array  # scale matrices Σ_k, shapes of the Gaussian's covariances:
    #                      full (K, D, D) | tied (D, D) | diag (K, D) | spherical (K,)
    dof: Array  # (K,)  degrees of freedom ν_k > 0


class StudentTStats(NamedTuple):
    """Additive statistics of the E-step, with u_nk taken at the current params.

    Sums over samples (so over chunks or devices); the second moments are
    centred at the current means c_k, in the covariance kernel's form.
    """

    counts: Array  # (K,)  N_k = Σ_n r_nk
    precision_counts: Array  # (K,)  Σ_n r_nk u_nk
    sums: Array  # (K, D)  Σ_n r_nk u_nk (x_n − c_k)
    second: Any  # centred second moments weighted by r_nk u_nk, per scale type
    precision_gaps: Array  # (K,)  Σ_n r_nk (u_nk − 1 − log u_nk) ≥ 0


# ----------------------------------------------------------------------------
# Special functions, accurate for large degrees of freedom
# ----------------------------------------------------------------------------


def log_minus_digamma(x: Array) -> Array:
    r""":math:`g(x) = \log x − ψ(x)`, positive and decreasing, ≈ 1/(2x) for large x.

    For x ≥ 12 by its asymptotic series :math:`\frac{1}{2x} + \frac{1}{12x^2}
    − \frac{1}{120x^4} + \frac{1}{252x^6} − \frac{1}{240x^8} + \frac{1}{132x^{10}}`
    (next term below 3e-14 of g), where the direct difference would lose the
    digits that the ν equation needs for large ν.
    """
    large = x >= _SERIES_FROM
    z = jnp.where(large, x, _SERIES_FROM)
    inv = 1 / z
    inv2 = inv * inv
    series = inv * (
        0.5
        + inv
        * (
            1 / 12
            + inv2 * (-1 / 120 + inv2 * (1 / 252 + inv2 * (-1 / 240 + inv2 / 132)))
        )
    )
    w = jnp.where(large, 1.0, x)
    return jnp.where(large, series, jnp.log(w) - digamma(w))


def _stirling_tail(z: Array) -> Array:
    # log Γ(z) − [(z − ½) log z − z + ½ log 2π], asymptotic series.
    inv = 1 / z
    inv2 = inv * inv
    return inv * (
        1 / 12
        + inv2 * (-1 / 360 + inv2 * (1 / 1260 + inv2 * (-1 / 1680 + inv2 / 1188)))
    )


def log_gamma_ratio(x: Array, a) -> Array:
    r""":math:`\log Γ(x + a) − \log Γ(x) − a \log x`, which → 0 as x → ∞.

    For x ≥ 12 through Stirling's series,
    :math:`(x + a − ½) \log(1 + a/x) − a + s(x + a) − s(x)`, whose terms are
    O(a) rather than O(x log x): the difference of two log-gammas near 1e8
    would keep only about 1e-7 of absolute accuracy.
    """
    large = x >= _SERIES_FROM
    z = jnp.where(large, x, _SERIES_FROM)
    series = (
        (z + a - 0.5) * jnp.log1p(a / z) - a + _stirling_tail(z + a) - _stirling_tail(z)
    )
    w = jnp.where(large, 1.0, x)
    direct = gammaln(w + a) - gammaln(w) - a * jnp.log(w)
    return jnp.where(large, series, direct)


def log1p_minus_identity(w: Array) -> Array:
    r""":math:`\log(1 + w) − w ≤ 0` for w > −1, by its series for |w| < 0.01."""
    small = jnp.abs(w) < _LOG1P_SERIES_BELOW
    s = jnp.where(small, w, 0.0)
    series = (
        s
        * s
        * (-1 / 2 + s * (1 / 3 + s * (-1 / 4 + s * (1 / 5 + s * (-1 / 6 + s / 7)))))
    )
    d = jnp.where(small, 1.0, w)
    return jnp.where(small, series, jnp.log1p(d) - d)


# ----------------------------------------------------------------------------
# The degrees-of-freedom equation
# ----------------------------------------------------------------------------


def solve_dof(target: Array, lower, upper) -> Array:
    r"""The ν ∈ [lower, upper] with :math:`g(ν/2) = \text{target}`, g = log − ψ.

    g decreases from +∞ to 0, so for target > 0 the root is unique. Solved in
    t = log ν, where :math:`φ(t) = \log g(e^t / 2) − \log \text{target}` is
    nearly linear (slope between −1 and −1.17), by Newton's method from
    the root of the series' first two terms,
    :math:`ν_0 = (3 + \sqrt{9 + 12 a}) / (6a)`, each step kept inside a bracket
    of the root (a step that would leave it, or a non-negative slope, is
    replaced by bisection). A fixed number of steps: traced, vmappable. A root
    outside the bounds gives the nearer bound, the maximiser of the concave
    ν part of Q on the interval.

    Args:
      target: a > 0, any shape.
      lower, upper: bounds of ν, 0 < lower < upper.

    Returns:
      ν, the shape and dtype of ``target``.
    """
    dtype = target.dtype
    log_target = jnp.log(target)
    low = jnp.full_like(target, jnp.log(jnp.asarray(lower, dtype)))
    high = jnp.full_like(target, jnp.log(jnp.asarray(upper, dtype)))

    def phi(t):
        return jnp.log(log_minus_digamma(0.5 * jnp.exp(t))) - log_target

    start = jnp.log((3 + jnp.sqrt(9 + 12 * target)) / (6 * target))
    start = jnp.clip(start, low, high)

    def newton(_, carry):
        t, lo, hi = carry
        value, slope = jax.jvp(phi, (t,), (jnp.ones_like(t),))
        lo = jnp.where(value > 0, t, lo)
        hi = jnp.where(value < 0, t, hi)
        proposal = t - value / jnp.where(slope < 0, slope, -1.0)
        accept = (slope < 0) & (proposal >= lo) & (proposal <= hi)
        return jnp.where(accept, proposal, 0.5 * (lo + hi)), lo, hi

    t, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, (start, low, high))
    t = jnp.where(phi(low) <= 0, low, jnp.where(phi(high) >= 0, high, t))
    return jnp.exp(t)


def _dof_score(dof: Array, maha: Array, resp: Array, counts: Array, n_features):
    r"""(1/N_k) Σ_n r_nk ∂ log t(x_n) / ∂(ν_k/2), at fixed μ and Σ; (K,).

    .. math::
        g(ν/2) − g((ν + D)/2) + \frac{1}{N_k} Σ_n r_{nk}
        \big(\log u_{nk} + 1 − u_{nk}\big), \qquad u_{nk} = \frac{ν + D}{ν + δ_{nk}},

    each term written without cancellation for large ν.
    """
    w = (n_features - maha) / (dof + maha)  # u − 1
    mean_gap = jnp.sum(resp * log1p_minus_identity(w), axis=0) / counts
    return (
        log_minus_digamma(0.5 * dof)
        - log_minus_digamma(0.5 * (dof + n_features))
        + mean_gap
    )


def _refine_dof(dof, maha, resp, counts, n_features, lower, upper):
    """A few damped Newton steps in log ν on the weighted t likelihood (μ, Σ fixed).

    Used by :meth:`StudentT.reference`, whose loop converges to a point where
    the score is zero (or ν sits at a bound with the score pushing outward).
    Steps are at most 2 in log ν; a non-negative slope steps uphill by 0.5.
    """
    low = jnp.log(jnp.asarray(lower, dof.dtype))
    high = jnp.log(jnp.asarray(upper, dof.dtype))

    def score(t):
        return _dof_score(jnp.exp(t), maha, resp, counts, n_features)

    def newton(_, t):
        value, slope = jax.jvp(score, (t,), (jnp.ones_like(t),))
        uphill = 0.5 * jnp.sign(value)
        proposal = jnp.where(
            slope < 0, t - value / jnp.where(slope < 0, slope, -1.0), t + uphill
        )
        proposal = jnp.where(jnp.isfinite(proposal), proposal, t + uphill)
        return jnp.clip(jnp.clip(proposal, t - 2, t + 2), low, high)

    start = jnp.clip(jnp.log(dof), low, high)
    return jnp.exp(jax.lax.fori_loop(0, _REFERENCE_DOF_STEPS, newton, start))


def _host_values(value) -> np.ndarray | None:
    """``value`` as a float64 NumPy array, or None while it is traced."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_dof(dof, name: str = "dof") -> None:
    """Raise ``ValueError`` unless the given degrees of freedom are finite and > 0."""
    values = _host_values(dof)
    if values is None:
        return
    if values.ndim > 1:
        raise ValueError(
            f"{name} must be a number or one number per component, got shape "
            f"{values.shape}"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"{name} (degrees of freedom) must be finite and positive, got {dof!r}"
        )


class StudentT(Family):
    r"""Specification of a mixture of multivariate t distributions.

    The scale type and whether ν is learned are static (they change shapes or
    branches); ``reg_covar``, ``dof`` and the bounds of learned ν are traced
    pytree leaves, so changing them does not recompile a jitted fit.

    Args:
      covariance_type: shape of the scale matrices Σ_k: ``"full"``, ``"tied"``,
        ``"diag"`` or ``"spherical"``, as the Gaussian's covariances.
      reg_covar: non-negative value added to every scale matrix's diagonal.
      dof: ν > 0, a number or (K,): the fixed degrees of freedom when
        ``learn_dof`` is False; otherwise where :meth:`reference` starts them.
      learn_dof: learn one ν_k per component (ECM) or keep ν fixed at ``dof``.
      min_dof, max_dof: bounds of the learned ν (default :data:`DOF_BOUNDS`).
        ν → ∞ is the Gaussian, so data without heavy tails drives ν to
        ``max_dof``; below ``min_dof`` a component would model little but its
        tails.

    Raises:
      ValueError: an unknown covariance type, a negative ``reg_covar``, or
        ``dof`` (or the bounds) not finite and positive.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.StudentT("diag", dof=4.0)
      >>> family.n_parameters(3, 2)  # 2 weights, 6 means, 6 scales, 3 ν
      17
    """

    params_type = StudentTParams
    location_field = "means"
    centred_fit = True
    online_statistics = False  # u-weights belong to the current E-step

    covariance_type: str = static("full")
    reg_covar: Any = 1e-6
    dof: Any = 10.0
    learn_dof: bool = static(True)
    min_dof: Any = DOF_BOUNDS[0]
    max_dof: Any = DOF_BOUNDS[1]

    def __post_init__(self):
        covariance_kernels.check_settings(self.covariance_type, self.reg_covar)
        check_dof(self.dof)
        check_dof(self.min_dof, "min_dof")
        check_dof(self.max_dof, "max_dof")
        low, high = _host_values(self.min_dof), _host_values(self.max_dof)
        if low is not None and high is not None and not np.all(low < high):
            raise ValueError(
                f"min_dof must be below max_dof, got {self.min_dof} and {self.max_dof}"
            )

    @property
    def kernel(self):
        return covariance_kernels.KERNELS[self.covariance_type]

    @property
    def label(self) -> str:
        """``t-`` and the scale type, which name the model in selection tables."""
        return f"t-{self.covariance_type}"

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """(K − 1) weights, K·D means, the scale matrices, and K ν if learned."""
        count = n_components * n_features + n_components - 1
        count += self.kernel.n_parameters(n_components, n_features)
        if self.learn_dof:
            count += n_components
        return count

    def charts(self):
        """Softmax weights, scaled means, the kernel's chart for Σ, and log ν."""
        free = {
            "weights": charts.Simplex,
            "means": charts.Location,
            "covariances": self.kernel.chart,
        }
        if self.learn_dof:
            free["dof"] = charts.LogPositive(0, "degrees of freedom")
        return free

    def _fixed_dof(self, n_components: int, dtype) -> Array:
        return jnp.broadcast_to(jnp.asarray(self.dof, dtype), (n_components,))

    def _mahalanobis(self, params: StudentTParams, X: Array, prec_chol) -> Array:
        """δ_nk, (N, K), through the kernel (relative to an origin among the means)."""
        origin = jnp.einsum("k,kd->d", params.weights, params.means)
        return self.kernel.mahalanobis(X, params.means, prec_chol, origin)

    def log_component_density(self, params: StudentTParams, X: Array) -> Array:
        r"""log t(x_n | μ_k, Σ_k, ν_k) for every sample and component, (N, K).

        Through the precision Cholesky factor U_k (U_k U_kᵀ = Σ_k⁻¹), written
        so that it tends to the Gaussian's log density without cancellation:

        .. math::
            R(ν_k/2, D/2) − \tfrac{D}{2} \log 2π + Σ_d \log U_{k,dd}
                − \tfrac{ν_k + D}{2} \log(1 + δ_{nk}/ν_k),

        with :math:`R(x, a) = \log Γ(x + a) − \log Γ(x) − a \log x`
        (:func:`log_gamma_ratio`).
        """
        n_features = params.means.shape[-1]
        prec_chol = self.kernel.precisions_cholesky(params.covariances)
        maha = self._mahalanobis(params, X, prec_chol)
        log_det = self.kernel.log_det_precision_cholesky(prec_chol, n_features)
        dof = params.dof
        log_normalizer = (
            log_gamma_ratio(0.5 * dof, 0.5 * n_features)
            - 0.5 * n_features * _LOG_2PI
            + log_det
        )
        return log_normalizer - 0.5 * (dof + n_features) * jnp.log1p(maha / dof)

    def _statistics(self, params, X, resp, maha) -> StudentTStats:
        n_features = params.means.shape[-1]
        w = (n_features - maha) / (params.dof + maha)  # u − 1
        weighted = resp * (1 + w)
        sums, second = self.kernel.second_moments(X, weighted, params.means)
        return StudentTStats(
            counts=jnp.sum(resp, axis=0),
            precision_counts=jnp.sum(weighted, axis=0),
            sums=sums,
            second=second,
            precision_gaps=-jnp.sum(resp * log1p_minus_identity(w), axis=0),
        )

    def statistics(
        self, params: StudentTParams, X: Array, resp: Array
    ) -> StudentTStats:
        r"""Counts, u-weighted centred moments and the ν statistic at ``params``.

        :math:`u_{nk} = (ν_k + D) / (ν_k + δ_{nk})` with δ the squared
        Mahalanobis distance under the current params; the moments are
        weighted by :math:`r_{nk} u_{nk}` and centred at the current means.
        """
        prec_chol = self.kernel.precisions_cholesky(params.covariances)
        maha = self._mahalanobis(params, X, prec_chol)
        return self._statistics(params, X, resp, maha)

    def _update_locations(self, stats: StudentTStats, params: StudentTParams):
        """Weights, means and scale matrices of the M-step (ν not touched)."""
        counts = guarded_counts(stats.counts)
        precision_counts = guarded_counts(stats.precision_counts)
        delta = stats.sums / precision_counts[:, None]
        shift = params.means
        # The kernel turns centred moments into S/c − (move)(move)ᵀ for counts
        # c. The t scatter is S_u / N_k with S_u = Σ r u (x − μ)(x − μ)ᵀ
        # = second − (Σ r u) Δ Δᵀ: given c = N_k, the move is Δ scaled by
        # √(Σ r u / N_k). The tied kernel sums c_k Δ_k Δ_kᵀ and divides by N,
        # which then is Σ_k (Σ r u) Δ_k Δ_kᵀ as well.
        move = delta * jnp.sqrt(precision_counts / counts)[:, None]
        covariances = self.kernel.covariances(
            stats.second, counts, move, jnp.sum(counts), self.reg_covar, shift
        )
        return update_weights(counts, False), shift + delta, covariances

    def _update_dof(self, stats: StudentTStats, params: StudentTParams) -> Array:
        n_components, n_features = params.means.shape
        if not self.learn_dof:
            return self._fixed_dof(n_components, params.means.dtype)
        counts = guarded_counts(stats.counts)
        target = stats.precision_gaps / counts + log_minus_digamma(
            0.5 * (params.dof + n_features)
        )
        dof = solve_dof(target, self.min_dof, self.max_dof)
        # An empty component has no evidence about ν: it keeps its value.
        return jnp.where(stats.counts > 0, dof, params.dof)

    def m_step(self, stats: StudentTStats, params: StudentTParams) -> StudentTParams:
        r"""The ECM M-step from statistics taken at ``params`` (θ_old).

        With :math:`u_{nk}` from θ_old and :math:`N_k = Σ_n r_{nk}`:

        .. math::
            π_k = N_k / N, \qquad
            μ_k = \frac{Σ_n r_{nk} u_{nk} x_n}{Σ_n r_{nk} u_{nk}}, \qquad
            Σ_k = \frac{Σ_n r_{nk} u_{nk} (x_n − μ_k)(x_n − μ_k)ᵀ}{N_k} + \text{reg}·I

        (tied: one Σ, the sum over k divided by N; diag keeps the diagonal,
        spherical averages it over features), and, when ν is learned, ν_k the
        root of

        .. math::
            −ψ(ν/2) + \log(ν/2) + 1 + \frac{1}{N_k} Σ_n r_{nk}
            (\log u_{nk} − u_{nk}) + ψ\big(\tfrac{ν_k^{old} + D}{2}\big)
            − \log\big(\tfrac{ν_k^{old} + D}{2}\big) = 0,

        i.e. :math:`g(ν/2) = \frac{1}{N_k} Σ_n r_{nk} (u_{nk} − 1 − \log u_{nk})
        + g\big(\frac{ν_k^{old} + D}{2}\big)` with g = log − ψ
        (:func:`solve_dof`), bounded to [``min_dof``, ``max_dof``]. The
        expected complete-data log-likelihood separates into a (μ, Σ) part and
        a concave ν part, and each is maximised, so the observed
        log-likelihood never decreases.
        """
        weights, means, covariances = self._update_locations(stats, params)
        dof = self._update_dof(stats, params)
        return StudentTParams(weights, means, covariances, dof)

    def reference(self, X: Array, resp: Array) -> StudentTParams:
        r"""The maximiser of Q = Σ r log(π t(x | θ)) for these responsibilities.

        Unlike the Gaussian's, the t M-step from responsibilities alone has no
        closed form: each component is a weighted t fit. It starts from the
        weighted Gaussian moments and ν = ``dof``, and alternates a few
        Newton steps of ν on the weighted t likelihood at the current μ and Σ
        (Liu & Rubin's ECME step, far faster than the ECM step for ν) with
        the M-step's μ and Σ, until the parameters move by less than
        ``sqrt(eps)/100`` relative (or 200 iterations). Its fixed point is a
        fixed point of :meth:`m_step`, where the gradient of Q is zero: so the
        M-step of the engine without current params (initialisation, the
        autodiff checker) is the maximiser of Q.
        """
        n_components = resp.shape[1]
        n_features = X.shape[1]
        dtype = X.dtype
        gaussian = Gaussian(self.covariance_type, reg_covar=self.reg_covar)
        centre = gaussian.reference(X, resp)
        moments = gaussian.m_step(gaussian.statistics(centre, X, resp), centre)
        start = StudentTParams(
            moments.weights,
            moments.means,
            moments.covariances,
            self._fixed_dof(n_components, dtype),
        )
        counts = jnp.sum(resp, axis=0)
        guarded = guarded_counts(counts)
        scale = jnp.sqrt(jnp.mean(jnp.var(X, axis=0))) + jnp.finfo(dtype).tiny
        tol = jnp.sqrt(jnp.finfo(dtype).eps) / 100

        def iterate(params):
            prec_chol = self.kernel.precisions_cholesky(params.covariances)
            maha = self._mahalanobis(params, X, prec_chol)
            if self.learn_dof:
                dof = _refine_dof(
                    params.dof,
                    maha,
                    resp,
                    guarded,
                    n_features,
                    self.min_dof,
                    self.max_dof,
                )
                params = params._replace(dof=jnp.where(counts > 0, dof, params.dof))
            stats = self._statistics(params, X, resp, maha)
            weights, means, covariances = self._update_locations(stats, params)
            return StudentTParams(weights, means, covariances, params.dof)

        def change(new, old):
            moved = jnp.max(jnp.abs(new.means - old.means)) / scale
            size = jnp.max(jnp.abs(old.covariances)) + jnp.finfo(dtype).tiny
            rescaled = jnp.max(jnp.abs(new.covariances - old.covariances)) / size
            dof = jnp.max(jnp.abs(jnp.log(new.dof) - jnp.log(old.dof)))
            return jnp.maximum(jnp.maximum(moved, rescaled), dof)

        def keep_going(carry):
            _, moved, count = carry
            return (moved > tol) & (count < _REFERENCE_ITERATIONS)

        def body(carry):
            params, _, count = carry
            new = iterate(params)
            return new, change(new, params), count + 1

        first = (start, jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))
        params, _, _ = jax.lax.while_loop(keep_going, body, first)
        return params
