r"""Mixture of von Mises–Fisher distributions for directions on the unit sphere.

Each component k is a von Mises–Fisher distribution on the sphere
:math:`S^{D-1} = \{x ∈ ℝ^D : ‖x‖ = 1\}` (D ≥ 2) with mean direction
:math:`μ_k` (a unit vector) and concentration :math:`κ_k > 0`:

.. math::
    \log p(x \mid μ_k, κ_k) = \log C_D(κ_k) + κ_k μ_kᵀ x, \qquad
    \log C_D(κ) = (D/2 − 1) \log κ − (D/2) \log 2π − \log I_{D/2−1}(κ),

with :math:`I_ν` the modified Bessel function of the first kind
(:mod:`jaxmix.families.bessel`). κ → 0 is the uniform distribution on the
sphere; large κ concentrates the mass around μ_k like a Gaussian of variance
1/κ in the D − 1 tangent directions. D = 2 is the von Mises distribution on
the circle, D = 3 the Fisher distribution on the sphere.

The data are unit vectors (:meth:`VonMisesFisher.check_data`): text
embeddings, normalised gene-expression profiles, directions and orientations.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.families import charts
from jaxmix.families.base import Family, static
from jaxmix.families.bessel import bessel_ratio, log_bessel_ive
from jaxmix.families.mixing import (
    guarded_counts,
    log_dirichlet,
    update_weights_map,
)

Array = jax.Array

#: Largest relative deviation of a data row's norm from 1 that
#: :meth:`VonMisesFisher.check_data` accepts.
UNIT_RTOL = 1e-6
# Tolerance on ‖μ_k‖ = 1 for returned mean directions.
_UNIT_ATOL = 1e-8
# Safeguarded Newton steps of the concentration equation A_D(κ) = R̄ (see
# ``solve_concentration``): from Banerjee's start, three reach the root to
# float64 round-off for D = 2 … 1000 and R̄ ∈ [1e-8, 1 − 1e-8] (Banerjee's
# start is off by up to 7%, one step by 0.5%, two by 3e-5); the rest is margin.
_NEWTON_STEPS = 6


class VonMisesFisherParams(NamedTuple):
    """Parameters of a mixture of von Mises–Fisher distributions."""

    weights: Array  # (K,)
    directions: Array  # (K, D)  mean directions μ_k, unit vectors
    concentrations: Array  # (K,)  concentrations κ_k > 0


class VonMisesFisherStats(NamedTuple):
    """Additive sufficient statistics (sums over samples, chunks or devices)."""

    counts: Array  # (K,)  N_k = Σ_n r_nk
    sums: Array  # (K, D)  resultants r_k = Σ_n r_nk x_n


class UnitSphere:
    r"""Unit vectors (K, D) through :math:`μ = u / ‖u‖`.

    A coordinate system with one redundant direction: Q does not change
    along u (the radial direction), and its gradient with respect to u is
    the tangential part :math:`(I − μμᵀ) ∇_μ Q / ‖u‖`, which vanishes exactly
    where the Lagrange condition of ‖μ‖ = 1 holds. Coordinates start at
    u = μ (the data's scale does not enter: directions have no unit).
    """

    per_component = True

    @staticmethod
    def to_unconstrained(value: Array, scale: Array) -> Array:
        del scale
        return value

    @staticmethod
    def to_value(coords: Array, scale: Array) -> Array:
        del scale
        return coords / jnp.linalg.norm(coords, axis=-1, keepdims=True)

    @staticmethod
    def infeasibility(value: np.ndarray) -> str | None:
        if not np.all(np.isfinite(value)):
            return "contains NaN or infinite values"
        norms = np.linalg.norm(value, axis=-1)
        worst = np.max(np.abs(norms - 1.0), initial=0.0)
        if worst > _UNIT_ATOL:
            index = np.unravel_index(np.argmax(np.abs(norms - 1.0)), norms.shape)
            return (
                f"not unit vectors (norm {norms[index]:.8g} for component "
                f"{index[0] if index else 0})"
            )
        return None


def mean_resultant_length(concentrations: Array, n_features: int) -> Array:
    r""":math:`A_D(κ) = I_{D/2}(κ) / I_{D/2−1}(κ)`, the mean resultant length.

    The expected value of :math:`μᵀx` under a von Mises–Fisher distribution
    of concentration κ on :math:`S^{D-1}`: E[x] = A_D(κ) μ. It increases from
    0 (κ = 0, uniform) towards 1 (κ → ∞) and is concave in κ.
    """
    return bessel_ratio(n_features / 2 - 1, concentrations)


def solve_concentration(mean_resultant: Array, n_features: int) -> Array:
    r"""The κ solving :math:`A_D(κ) = \bar R`: the maximum-likelihood concentration.

    Starts from Banerjee et al.'s (2005) approximation and refines it by
    Newton's method (as Sra, 2012, proposes), with
    :math:`A_D'(κ) = 1 − A_D(κ)^2 − (D − 1) A_D(κ) / κ`:

    .. math::
        κ_0 = \frac{\bar R (D − \bar R^2)}{1 − \bar R^2}, \qquad
        κ_{i+1} = κ_i − \frac{A_D(κ_i) − \bar R}{A_D'(κ_i)}.

    Each step is safeguarded by a bracket of the root: Amos's (1974) bounds
    :math:`\frac{κ}{ν + 1 + \sqrt{κ^2 + (ν + 1)^2}} ≤ A_D(κ) ≤
    \frac{κ}{ν + \frac12 + \sqrt{κ^2 + (ν + \frac12)^2}}` (ν = D/2 − 1),
    inverted, give

    .. math::
        \frac{(D − 1) \bar R}{1 − \bar R^2} ≤ κ ≤ \frac{D \bar R}{1 − \bar R^2},

    every evaluation of A_D narrows it (A_D increases), and a Newton step
    that would leave it (or a non-positive derivative, the round-off of
    :math:`A_D'` at very large κ) is replaced by the bracket's geometric
    midpoint. A fixed number of steps: traced, vmappable, no data-dependent
    loop.

    :math:`\bar R` is first clipped to [ε, 1 − 4ε] (ε the dtype's epsilon):
    a resultant below ε of the count is round-off, and :math:`\bar R = 1`
    (all of a component's samples identical) would make κ infinite; the
    clip bounds κ by about (D − 1) / (8ε), as ``reg_covar`` bounds a
    Gaussian's variance from below.

    Args:
      mean_resultant: :math:`\bar R_k = ‖r_k‖ / N_k ∈ [0, 1]`, any shape.
      n_features: D ≥ 2.

    Returns:
      κ > 0, the shape and dtype of ``mean_resultant``.
    """
    dim = n_features
    eps = jnp.finfo(mean_resultant.dtype).eps
    r = jnp.clip(mean_resultant, eps, 1 - 4 * eps)
    one_minus_r2 = (1 - r) * (1 + r)
    lower = (dim - 1) * r / one_minus_r2
    upper = dim * r / one_minus_r2
    start = jnp.clip(r * (dim - jnp.square(r)) / one_minus_r2, lower, upper)

    def newton(_, carry):
        kappa, lower, upper = carry
        a = mean_resultant_length(kappa, dim)
        lower = jnp.where(a <= r, kappa, lower)
        upper = jnp.where(a >= r, kappa, upper)
        slope = 1 - jnp.square(a) - (dim - 1) * a / kappa
        proposal = kappa - (a - r) / jnp.where(slope > 0, slope, 1.0)
        accept = (slope > 0) & (proposal >= lower) & (proposal <= upper)
        kappa = jnp.where(accept, proposal, jnp.sqrt(lower * upper))
        return kappa, lower, upper

    kappa, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, (start, lower, upper))
    return kappa


def _check_concentration(weight_concentration) -> None:
    """Reject a Dirichlet α given as host numbers that is not finite and ≥ 1."""
    if weight_concentration is None or isinstance(
        weight_concentration, (bool, np.bool_)
    ):
        return
    if not isinstance(weight_concentration, (int, float, np.ndarray, np.number)):
        return  # traced, or a placeholder while JAX rebuilds the pytree
    alpha = np.asarray(weight_concentration, dtype=np.float64)
    if not np.all(np.isfinite(alpha)) or np.any(alpha < 1):
        raise ValueError(
            "weight_concentration must be finite and >= 1, got "
            f"{weight_concentration!r}"
        )


class VonMisesFisher(Family):
    r"""Specification of a mixture of von Mises–Fisher distributions.

    The M-step is in closed form for the weights and mean directions, and
    solves the one-dimensional concentration equation by a fixed number of
    safeguarded Newton steps (:func:`solve_concentration`), which reach the
    root to round-off: EM with it is exact EM, and the autodiff checker
    verifies it like any closed-form M-step.

    Args:
      weight_concentration: Dirichlet concentration α on the weights (a
        scalar or (K,), every entry ≥ 1; traced); None for maximum
        likelihood.
      uniform_weights: if True the weights stay at 1/K (static).

    Raises:
      ValueError: a ``weight_concentration`` given as host numbers is below 1.

    Examples:
      >>> import jaxmix
      >>> family = jaxmix.families.VonMisesFisher()
      >>> family.n_parameters(3, 4)  # (K − 1) + K(D − 1) + K
      14
    """

    params_type = VonMisesFisherParams
    location_field = "directions"

    weight_concentration: Any = None
    uniform_weights: bool = static(False)

    def __post_init__(self):
        _check_concentration(self.weight_concentration)

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """(K − 1) weights, K (D − 1) directions on the sphere, K concentrations."""
        count = n_components * (n_features - 1) + n_components
        if not self.uniform_weights:
            count += n_components - 1
        return count

    def charts(self):
        """Softmax weights, directions through u / ‖u‖, log concentrations."""
        free = {} if self.uniform_weights else {"weights": charts.Simplex}
        return {
            **free,
            "directions": UnitSphere,
            "concentrations": charts.LogPositive(0, "concentration"),
        }

    def check_data(self, X) -> None:
        """Unit vectors only: finite rows of norm 1 (to ``UNIT_RTOL``), D ≥ 2."""
        if X.ndim != 2 or X.shape[1] < 2:
            n_features = X.shape[1] if X.ndim == 2 else X.ndim
            raise ValueError(
                "A von Mises-Fisher mixture models unit vectors in at least 2 "
                f"dimensions (n_features >= 2), got n_features = {n_features}"
            )
        if X.shape[0] == 0:
            return
        if not np.all(np.isfinite(X)):
            raise ValueError(
                "A von Mises-Fisher mixture needs unit vectors, but X contains NaN "
                "or infinite values"
            )
        norms = np.linalg.norm(np.asarray(X, dtype=np.float64), axis=1)
        deviation = np.abs(norms - 1.0)
        if np.any(deviation > UNIT_RTOL):
            row = int(np.argmax(deviation))
            raise ValueError(
                "A von Mises-Fisher mixture needs unit vectors (rows of norm 1), "
                f"but row {row} of X has norm {norms[row]:.8g}; divide each row by "
                "its norm first"
            )

    def log_component_density(self, params: VonMisesFisherParams, X: Array) -> Array:
        r"""log p(x_n | μ_k, κ_k) for every sample and component, shape (N, K).

        One matrix product, written around the mode so that no large terms
        cancel when κ is large:

        .. math::
            κ_k (μ_kᵀ x_n − 1) + \big[\log C_D(κ_k) + κ_k\big], \quad
            \log C_D(κ) + κ = ν \log κ − \tfrac{D}{2} \log 2π
                             − \log\big(I_ν(κ) e^{−κ}\big),

        with ν = D/2 − 1 and the exponentially scaled Bessel function of
        :func:`jaxmix.families.bessel.log_bessel_ive`.
        """
        n_features = X.shape[1]
        nu = n_features / 2 - 1
        kappa = params.concentrations
        log_normalizer = -(n_features / 2) * math.log(2 * math.pi) - log_bessel_ive(
            nu, kappa
        )
        if nu != 0:  # D = 2 has no power of κ
            log_normalizer = log_normalizer + nu * jnp.log(kappa)
        return (X @ params.directions.T - 1) * kappa + log_normalizer

    def statistics(self, params, X: Array, resp: Array) -> VonMisesFisherStats:
        """Counts and resultants; ``params`` is not needed."""
        del params
        return VonMisesFisherStats(jnp.sum(resp, axis=0), resp.T @ X)

    def m_step(self, stats: VonMisesFisherStats, params) -> VonMisesFisherParams:
        r"""Closed-form (MAP) M-step for the weights and directions, Newton for κ.

        .. math::
            π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
            μ_k = \frac{r_k}{‖r_k‖}, \qquad
            A_D(κ_k) = \bar R_k = \frac{‖r_k‖}{N_k},

        with the resultant :math:`r_k = Σ_n r_{nk} x_n` (maximum likelihood:
        π_k = N_k / N). μ_k maximises :math:`κ_k μ_kᵀ r_k` on the sphere for
        any κ_k > 0, and the derivative of Q in κ_k,
        :math:`N_k (\bar R_k − A_D(κ_k))` (since
        :math:`\frac{d}{dκ} \log C_D(κ) = −A_D(κ)`), vanishes where A_D(κ_k)
        = R̄_k, solved by :func:`solve_concentration`; R̄_k uses N_k itself,
        however small, so that a component of almost no weight gets the
        maximiser too. A component whose resultant is exactly zero (emptied,
        or perfectly balanced) keeps its current direction (the first axis
        when there is none) and gets the smallest concentration, nearly
        uniform.
        """
        counts = guarded_counts(stats.counts)
        n_components, n_features = stats.sums.shape
        length = jnp.linalg.norm(stats.sums, axis=1)
        if params is None:
            fallback = jnp.zeros_like(stats.sums).at[:, 0].set(1.0)
        else:
            fallback = params.directions
        positive = length > 0
        directions = jnp.where(
            positive[:, None],
            stats.sums / jnp.where(positive, length, 1.0)[:, None],
            fallback,
        )
        # R̄_k from the unguarded counts: the guard's 10ε lowers R̄_k by
        # 10ε / N_k, which moves κ_k off the maximiser of Q wherever N_k or
        # 1 − R̄_k is small. A component of weight 1e-16 got a κ_k of 7
        # instead of 2e4; one on a single sample got 1 − R̄_k = 9ε or 10ε
        # (by the last bit of ‖r_k‖) in place of the clip's 4ε, so its κ_k
        # alternated between 4.7e14 and 4.5e14 and each fall lowered Q.
        mean_resultant = length / jnp.where(positive, stats.counts, 1.0)
        concentrations = solve_concentration(mean_resultant, n_features)
        weights = update_weights_map(
            counts, self.weight_concentration, self.uniform_weights
        )
        return VonMisesFisherParams(weights, directions, concentrations)

    def log_prior(self, params: VonMisesFisherParams) -> Array:
        """The Dirichlet prior on the weights (zero for maximum likelihood)."""
        return log_dirichlet(
            params.weights, self.weight_concentration, self.uniform_weights
        )
