"""``VonMisesFisherMixture``: a mixture of von Mises–Fisher distributions, by EM."""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    check_is_fitted,
    check_weights_init,
    precision,
)
from jaxmix.families.von_mises_fisher import (
    VonMisesFisher,
    VonMisesFisherParams,
    mean_resultant_length,
)


def _check_directions(directions, n_components: int, n_features: int) -> np.ndarray:
    """Starting directions (K, D): finite, non-zero rows, divided by their norms."""
    directions = np.asarray(directions, dtype=np.float64)
    if directions.shape != (n_components, n_features):
        raise ValueError(
            f"directions_init must have shape ({n_components}, {n_features}), "
            f"got {directions.shape}"
        )
    if not np.all(np.isfinite(directions)):
        raise ValueError("directions_init contains NaN or infinity")
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    if np.any(norms == 0):
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"directions_init row {row} is zero: it has no direction")
    return directions / norms


def _check_concentrations(concentrations, n_components: int) -> np.ndarray:
    concentrations = np.asarray(concentrations, dtype=np.float64)
    if concentrations.shape != (n_components,):
        raise ValueError(
            f"concentrations_init must have shape ({n_components},), "
            f"got {concentrations.shape}"
        )
    if not np.all(np.isfinite(concentrations)) or np.any(concentrations <= 0):
        raise ValueError(
            f"concentrations_init must be finite and > 0, got {concentrations.tolist()}"
        )
    return concentrations


def _check_weight_prior(value, n_components: int) -> np.ndarray:
    """Dirichlet α, finite and ≥ 1, at shape (K,)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(
            f"weight_concentration_prior must be a number or an array, got {value!r}"
        )
    try:
        alpha = np.broadcast_to(np.asarray(value, dtype=np.float64), (n_components,))
    except (TypeError, ValueError):
        raise ValueError(
            "weight_concentration_prior must be a scalar or an array of shape "
            f"({n_components},), got {value!r}"
        ) from None
    if not np.all(np.isfinite(alpha)) or np.any(alpha < 1):
        raise ValueError(
            "weight_concentration_prior must be finite and >= 1 (below 1 the "
            "Dirichlet density is unbounded at the boundary and has no interior "
            f"mode), got {value!r}"
        )
    return alpha


def sample_von_mises_fisher(
    rng: np.random.RandomState, direction: np.ndarray, concentration: float, n: int
) -> np.ndarray:
    r"""n draws from the von Mises–Fisher distribution (μ, κ), by Wood's method.

    Wood (1994): :math:`w = μᵀx` has density proportional to
    :math:`e^{κw} (1 − w^2)^{(D−3)/2}` on [−1, 1], sampled by rejection from
    a transformed Beta((D−1)/2, (D−1)/2) envelope with

    .. math::
        b = \frac{D − 1}{2κ + \sqrt{4κ^2 + (D − 1)^2}}, \quad
        x_0 = \frac{1 − b}{1 + b}, \quad
        w = \frac{1 − (1 + b) z}{1 − (1 − b) z},

    accepting when :math:`κw + (D − 1)\log(1 − x_0 w) − c ≥ \log u`,
    :math:`c = κx_0 + (D − 1) \log(1 − x_0^2)`; the acceptance rate is above
    one half for every κ and D. Then :math:`x = wμ + \sqrt{1 − w^2}\,v` with v
    uniform on the unit sphere orthogonal to μ. :math:`1 − w = 2bz / (1 − (1
    − b) z)` is formed directly, so the tangent part keeps its digits at large κ.

    Returns:
      (n, D) unit vectors, float64.
    """
    dim = direction.shape[0]
    kappa = float(concentration)
    b = (dim - 1) / (2 * kappa + np.sqrt(4 * kappa**2 + (dim - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    # log(1 − x0²) = log(4b / (1 + b)²), without cancellation at large κ.
    c = kappa * x0 + (dim - 1) * (np.log(4 * b) - 2 * np.log1p(b))
    one_minus_w = np.empty(n)
    filled = 0
    while filled < n:
        size = n - filled
        z = rng.beta((dim - 1) / 2, (dim - 1) / 2, size)
        denominator = 1 - (1 - b) * z
        gap = 2 * b * z / denominator  # 1 − w
        w = 1 - gap
        log_u = np.log(rng.random_sample(size))
        # 1 − x0 w = (1 − x0) + x0 (1 − w), with 1 − x0 = 2b / (1 + b).
        log_envelope = np.log(2 * b / (1 + b) + x0 * gap)
        accept = kappa * w + (dim - 1) * log_envelope - c >= log_u
        taken = gap[accept]
        one_minus_w[filled : filled + taken.size] = taken
        filled += taken.size
    tangent = rng.standard_normal((n, dim))
    tangent -= np.outer(tangent @ direction, direction)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    w = 1 - one_minus_w
    sine = np.sqrt(np.maximum(one_minus_w * (2 - one_minus_w), 0.0))
    return w[:, None] * direction[None] + sine[:, None] * tangent


class VonMisesFisherMixture(MixtureEstimator):
    r"""Mixture of von Mises–Fisher distributions on the unit sphere, fitted by EM.

    For directional data: unit vectors in :math:`ℝ^D` (D ≥ 2), such as
    normalised text embeddings or expression profiles (spherical clustering),
    directions in space (D = 3) or angles on the circle (D = 2). Component k
    has the density

    .. math::
        p(x \mid μ_k, κ_k) = C_D(κ_k)\, e^{κ_k μ_kᵀ x}, \qquad
        C_D(κ) = \frac{κ^{D/2−1}}{(2π)^{D/2} I_{D/2−1}(κ)},

    with mean direction μ_k (``directions_``) and concentration κ_k ≥ 0
    (``concentrations_``; 0 is uniform on the sphere, large κ is tight around
    μ_k with spread about 1/√κ radians). The M-step is exact:
    :math:`μ_k = r_k / ‖r_k‖` with :math:`r_k = Σ_n r_{nk} x_n`, and κ_k
    solves :math:`A_D(κ_k) = ‖r_k‖ / N_k` (Banerjee et al.'s approximation
    refined by safeguarded Newton steps). The ``n_init`` restarts run as one
    vmapped compiled program; float32 data is fitted in float32, everything
    else in float64.

    ``directions_`` are the modes μ_k, not the components' means: the mean of
    component k is :math:`A_D(κ_k) μ_k`, shorter than a unit vector (see
    :meth:`mean`).

    Args:
      n_components: number of mixture components K.
      tol: convergence threshold on the change of the objective (mean
        log-likelihood, plus log prior / N with a prior).
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final objective) is kept.
      init_params: ``"kmeans"`` (the default: K-means labels, which on unit
        vectors is close to spherical K-means), ``"k-means++"``,
        ``"random_from_data"`` (each component starts at one sample, very
        concentrated: the first E-step assigns every sample to the closest
        start) or ``"random"`` (random responsibilities).
      weights_init: optional starting weights (K,).
      directions_init: optional starting mean directions (K, D); each row is
        divided by its norm.
      concentrations_init: optional starting concentrations (K,), > 0.
      uniform_weights: keep the weights at 1/K.
      weight_concentration_prior: Dirichlet α ≥ 1 on the weights, a scalar or
        (K,); None for maximum likelihood.
      normalize: if False (the default), every row of X must be a unit vector
        (to a relative 1e-6; it is then rescaled to norm 1 exactly), else
        ``ValueError``. If True, every row is divided by its norm, in ``fit``
        and in every later call (rows of norm zero are refused), as for data
        whose length carries no information.
      random_state: None, an int or a ``numpy.random.RandomState``.

    Attributes:
      weights_: (K,) mixing weights.
      directions_: (K, D) mean directions μ_k (unit vectors).
      concentrations_: (K,) concentrations κ_k.
      converged_, n_iter_, lower_bound_ (the final objective), lower_bounds_,
      n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import VonMisesFisherMixture
      >>> rng = np.random.default_rng(0)
      >>> X = np.r_[[0, 0, 1] + 0.1 * rng.normal(size=(50, 3)),
      ...           [1, 0, 0] + 0.1 * rng.normal(size=(50, 3))]
      >>> model = VonMisesFisherMixture(2, normalize=True, random_state=0).fit(X)
      >>> np.abs(model.directions_).argmax(axis=1).tolist() in ([0, 2], [2, 0])
      True
    """

    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "directions_init": ["array-like", None],
        "concentrations_init": ["array-like", None],
        "uniform_weights": ["boolean"],
        "weight_concentration_prior": [
            Interval(Real, 1.0, None, closed="left"),
            "array-like",
            None,
        ],
        "normalize": ["boolean"],
    }
    _nonfinite_message = (
        "Fitting the von Mises-Fisher mixture failed: every restart reached a "
        "non-finite log-likelihood. Check that the data are finite unit vectors, "
        "or try fewer components."
    )

    def __init__(
        self,
        n_components=1,
        *,
        tol=1e-3,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        directions_init=None,
        concentrations_init=None,
        uniform_weights=False,
        weight_concentration_prior=None,
        normalize=False,
        random_state=None,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.directions_init = directions_init
        self.concentrations_init = concentrations_init
        self.uniform_weights = uniform_weights
        self.weight_concentration_prior = weight_concentration_prior
        self.normalize = normalize
        self.random_state = random_state

    def _make_family(self, X: np.ndarray | None) -> VonMisesFisher:
        del X
        # α at its full shape (K,): a scalar and an array share one compiled fit.
        alpha = None
        if self.weight_concentration_prior is not None:
            alpha = _check_weight_prior(
                self.weight_concentration_prior, self.n_components
            )
        return VonMisesFisher(
            weight_concentration=alpha, uniform_weights=bool(self.uniform_weights)
        )

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        """Rows at norm 1: checked (``normalize=False``) or scaled (True)."""
        if not self.normalize:
            try:
                VonMisesFisher().check_data(X)
            except ValueError as error:
                if "unit vectors (rows of norm 1)" not in str(error):
                    raise
                raise ValueError(
                    f"{error} (or construct the model with normalize=True)"
                ) from None
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        if self.normalize and np.any(norms == 0):
            row = int(np.flatnonzero(norms[:, 0] == 0)[0])
            raise ValueError(
                f"row {row} of X is zero: it has no direction, so it cannot be "
                "normalized"
            )
        return (X / norms).astype(X.dtype, copy=False)

    def _user_params(self, X: np.ndarray, family: VonMisesFisher) -> dict:
        del family
        user = {}
        if self.weights_init is not None:
            if self.uniform_weights:
                raise ValueError(
                    "weights_init cannot be combined with uniform_weights=True"
                )
            user["weights"] = check_weights_init(self.weights_init, self.n_components)
        if self.directions_init is not None:
            user["directions"] = _check_directions(
                self.directions_init, self.n_components, X.shape[1]
            )
        if self.concentrations_init is not None:
            user["concentrations"] = _check_concentrations(
                self.concentrations_init, self.n_components
            )
        return user

    def _set_fitted(self, params: VonMisesFisherParams, dtype) -> None:
        self.weights_ = params.weights
        self.directions_ = params.directions
        self.concentrations_ = params.concentrations

    def _fitted_params(self) -> VonMisesFisherParams:
        return VonMisesFisherParams(
            self.weights_, self.directions_, self.concentrations_
        )

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k A_D(κ_k) μ_k`, (D,).

        Its norm is below 1 (the mean of points on the sphere lies inside it).
        """
        check_is_fitted(self)
        dtype = self.directions_.dtype
        with precision(dtype):
            lengths = mean_resultant_length(
                jnp.asarray(self.concentrations_), self.n_features_in_
            )
            lengths = np.asarray(lengths, dtype=dtype)
        return (self.weights_ * lengths) @ self.directions_

    def _draw(self, rng, labels):
        # Unit vectors by Wood's algorithm, component by component.
        counts = np.bincount(labels, minlength=self.n_components)
        return np.concatenate(
            [
                sample_von_mises_fisher(
                    rng,
                    self.directions_[k].astype(np.float64),
                    self.concentrations_[k],
                    int(count),
                )
                for k, count in enumerate(counts)
            ]
        )
