"""``PoissonMixture``: a mixture of Poissons for count data, fitted by EM."""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import numpy as np

from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    StrOptions,
    check_is_fitted,
    check_weights_init,
)
from jaxmix.families.poisson import Poisson, PoissonParams


def _check_rates(rates, n_components: int, n_features: int) -> np.ndarray:
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != (n_components, n_features):
        raise ValueError(
            f"rates_init must have shape ({n_components}, {n_features}), "
            f"got {rates.shape}"
        )
    if not np.all(np.isfinite(rates)):
        raise ValueError("rates_init contains NaN or infinity")
    if rates.min() < 0:
        raise ValueError(
            f"rates_init holds Poisson rates and must be >= 0, got {rates.min():g}"
        )
    return rates


def _as_numbers(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 array broadcastable to ``shape`` (not a bool or a string)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number or an array, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to shape {shape}, got shape "
            f"{array.shape}"
        ) from None


def _check_concentration(value, n_components: int) -> np.ndarray:
    """Dirichlet α, finite and ≥ 1, at shape (K,)."""
    alpha = _as_numbers(value, "weight_concentration_prior", (n_components,))
    if not np.all(np.isfinite(alpha)) or np.any(alpha < 1):
        raise ValueError(
            "weight_concentration_prior must be finite and >= 1 (below 1 the "
            "Dirichlet density is unbounded at the boundary and has no interior "
            f"mode), got {value!r}"
        )
    return alpha


def _check_rate_prior(prior, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A Gamma prior ``(a, b)`` at ``shape``: a finite and ≥ 1, b finite and > 0."""
    if (
        isinstance(prior, (str, bytes))
        or not hasattr(prior, "__len__")
        or len(prior) != 2
    ):
        raise ValueError(
            f"rate_prior must be a pair (a, b) of Gamma shape and rate, got {prior!r}"
        )
    a = _as_numbers(prior[0], "rate_prior a", shape)
    b = _as_numbers(prior[1], "rate_prior b", shape)
    if not np.all(np.isfinite(a)) or np.any(a < 1):
        raise ValueError(
            "rate_prior a (the Gamma shape) must be finite and >= 1 (below 1 the "
            f"density is unbounded at 0 and has no mode), got {prior[0]!r}"
        )
    if not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(
            f"rate_prior b (the Gamma rate) must be finite and > 0, got {prior[1]!r}"
        )
    return a, b


class PoissonMixture(MixtureEstimator):
    r"""Mixture of multivariate Poisson distributions for counts, fitted by (MAP) EM.

    Each component is a product of independent Poissons with rates λ_k
    (``rates_``); data must be counts (non-negative integers). With
    ``weight_concentration_prior`` α (a Dirichlet prior on the weights) and/or
    ``rate_prior=(a, b)`` (a Gamma prior of shape a and rate b on every λ_kd),
    EM maximises the posterior instead of the likelihood:

    .. math::
        π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
        λ_{kd} = \frac{Σ_n r_{nk} x_{nd} + a − 1}{N_k + b}.

    Without a prior λ_kd = Σ_n r_nk x_nd / N_k, which is exactly 0 when no
    sample of component k counts anything in feature d; a new sample with a
    positive count there then has zero density under that component. A Gamma
    prior with a > 1 keeps every rate positive. The ``n_init`` restarts run as
    one vmapped compiled program; float32 data is fitted in float32, everything
    else in float64.

    Args:
      n_components: number of mixture components K.
      tol: convergence threshold on the change of the objective (mean
        log-likelihood, plus log prior / N with priors).
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final objective) is kept.
      init_params: ``"kmeans"`` (one-hot labels of K-means, the default) or
        ``"random"`` (random responsibilities); both average over many samples,
        so a starting rate is not 0 because one sample counted nothing.
      weights_init: optional starting weights (K,).
      rates_init: optional starting rates (K, D), ≥ 0.
      uniform_weights: keep the weights at 1/K.
      weight_concentration_prior: Dirichlet α ≥ 1, a scalar or (K,); None for
        maximum likelihood.
      rate_prior: ``(a, b)``, Gamma shape a ≥ 1 and rate b > 0, each a scalar
        or broadcastable to (K, D); None for maximum likelihood.
      random_state: None, an int or a ``numpy.random.RandomState``.
      allow_nan: if True, NaN entries of X are missing values (missing at
        random): ``fit`` runs EM for the observed-data likelihood (each sample
        contributes through its observed features), the scores are
        observed-data log-likelihoods, and the initialisation runs on the data
        with each missing entry replaced by its feature's observed mean. A row
        with no observed value is an error. If False (the default), NaN is an
        error, as in scikit-learn.

    Attributes:
      weights_: (K,) mixing weights.
      rates_: (K, D) Poisson rates (the components' means).
      converged_, n_iter_, lower_bound_ (the final objective), lower_bounds_,
      n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import PoissonMixture
      >>> X = np.array([[0, 1], [1, 0], [0, 0], [1, 1]] * 5 + [[9, 10], [11, 10]] * 5)
      >>> pm = PoissonMixture(2, random_state=0).fit(X)
      >>> np.sort(pm.rates_[:, 0]).round(2)
      array([ 0.5, 10. ])
    """

    # Seeding on single samples ("k-means++", "random_from_data") starts every
    # feature a sample counted 0 at a rate of exactly 0, where most other
    # samples have zero likelihood: only starts that average are offered.
    _missing_capable = True
    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "allow_nan": ["boolean"],
        "init_params": [StrOptions({"kmeans", "random"})],
        "rates_init": ["array-like", None],
        "uniform_weights": ["boolean"],
        "weight_concentration_prior": [
            Interval(Real, 1.0, None, closed="left"),
            "array-like",
            None,
        ],
        "rate_prior": "no_validation",  # a pair (a, b), checked in _make_family
    }
    _nonfinite_message = (
        "Fitting the Poisson mixture failed: every restart reached a non-finite "
        "log-likelihood (some samples became impossible under every component, "
        "a rate being 0 where they count something). Try init_params='random', "
        "fewer components, or a rate_prior=(a, b) with a > 1."
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
        rates_init=None,
        uniform_weights=False,
        weight_concentration_prior=None,
        rate_prior=None,
        random_state=None,
        allow_nan=False,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.rates_init = rates_init
        self.uniform_weights = uniform_weights
        self.weight_concentration_prior = weight_concentration_prior
        self.rate_prior = rate_prior
        self.random_state = random_state
        self.allow_nan = allow_nan

    def _make_family(self, X: np.ndarray | None) -> Poisson:
        n_features = self.n_features_in_ if X is None else X.shape[1]
        # Priors at their full shapes, (K,) and (K, D): a scalar and an array
        # prior then share one compiled fit.
        alpha = None
        if self.weight_concentration_prior is not None:
            alpha = _check_concentration(
                self.weight_concentration_prior, self.n_components
            )
        rate_prior = None
        if self.rate_prior is not None:
            rate_prior = _check_rate_prior(
                self.rate_prior, (self.n_components, n_features)
            )
        return Poisson(
            weight_concentration=alpha,
            rate_prior=rate_prior,
            uniform_weights=bool(self.uniform_weights),
        )

    def _user_params(self, X: np.ndarray, family: Poisson) -> dict:
        del family
        user = {}
        if self.weights_init is not None:
            if self.uniform_weights:
                raise ValueError(
                    "weights_init cannot be combined with uniform_weights=True"
                )
            user["weights"] = check_weights_init(self.weights_init, self.n_components)
        if self.rates_init is not None:
            user["rates"] = _check_rates(self.rates_init, self.n_components, X.shape[1])
        return user

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        # scikit-learn's wording for the estimators tagged ``positive_only``,
        # which its users and its checks match on.
        if X.size and X.min() < 0:
            raise ValueError(
                "Negative values in data passed to PoissonMixture: counts must be "
                f"non-negative integers, got {X.min():g}"
            )
        return X

    def __sklearn_tags__(self):
        # Counts are non-negative integers. scikit-learn's one tag for
        # integer-valued input is ``categorical`` (integer codes, as for its
        # CategoricalNB); with it, its estimator checks feed non-negative
        # integers, the data a Poisson takes, rather than reals it rejects.
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.categorical = True
        return tags

    def _set_fitted(self, params: PoissonParams, dtype) -> None:
        self.weights_ = params.weights
        self.rates_ = params.rates

    def _fitted_params(self) -> PoissonParams:
        return PoissonParams(self.weights_, self.rates_)

    def _component_axes(self) -> PoissonParams:
        return PoissonParams(True, True)

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k λ_k`, shape (D,)."""
        check_is_fitted(self)
        return self.weights_ @ self.rates_

    def _draw(self, rng, labels):
        return rng.poisson(self.rates_[labels].astype(np.float64))
