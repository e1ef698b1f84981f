"""``CategoricalMixture``: a mixture of categoricals for coded answers, fitted by EM."""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np

from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    StrOptions,
)
from jaxmix.families.categorical import Categorical, CategoricalParams

# Tolerance on Σ π_k = 1 and Σ_l θ_kdl = 1 for user-given starting values.
_SUM_ATOL = 1e-6


def _check_prior(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Finite numbers ≥ 1 broadcast to ``shape`` (MAP needs an interior mode)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number or an array, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    try:
        full = np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to shape {shape}, got shape "
            f"{array.shape}"
        ) from None
    if not np.all(np.isfinite(array)) or np.any(array < 1):
        raise ValueError(
            f"{name} must be finite and >= 1 (below 1 the Dirichlet density is "
            f"unbounded at the boundary and has no interior mode), got {value!r}"
        )
    return full


def _check_distributions(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Finite probabilities of the given shape summing to one over the last axis."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"{name} holds probabilities and must be in [0, 1], but got min value "
            f"{array.min():.5f}, max value {array.max():.5f}"
        )
    totals = array.sum(axis=-1)
    if not np.allclose(totals, 1.0, rtol=0, atol=_SUM_ATOL):
        worst = totals.flat[np.argmax(np.abs(totals - 1.0))]
        raise ValueError(
            f"{name} must sum to 1 over its last axis, but a sum is {worst:.5f}"
        )
    return array


class CategoricalMixture(MixtureEstimator):
    r"""Mixture of categorical distributions for coded answers, fitted by (MAP) EM.

    Each sample has D categorical features (e.g. answers to D survey
    questions) coded 0 … L − 1. Component k gives feature d the level
    probabilities θ_kd (``probs_[k, d]``, summing to one), independently
    across features. With ``weight_concentration_prior`` α (a Dirichlet prior
    on the weights) and/or ``level_prior`` β (a Dirichlet prior on every θ_kd),
    EM maximises the posterior instead of the likelihood:

    .. math::
        π_k = \frac{N_k + α_k − 1}{N + Σ_j α_j − K}, \qquad
        θ_{kdl} = \frac{Σ_n r_{nk} [x_{nd} = l] + β_{kdl} − 1}
                       {N_k + Σ_{l'} (β_{kdl'} − 1)}.

    Maximum-likelihood probabilities of a level no sample of a component takes
    are exactly 0, and a new sample with that answer then has zero density
    under that component; β > 1 keeps every probability positive. The
    ``n_init`` restarts run as one vmapped compiled program; float32 data is
    fitted in float32, everything else in float64.

    Args:
      n_components: number of mixture components K.
      n_levels: L, the number of levels of every feature; None infers it at
        fit time as the largest code + 1 (or the last axis of ``probs_init``).
        Codes at or above L are rejected.
      tol: convergence threshold on the change of the objective (mean
        log-likelihood, plus log prior / N with priors).
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final objective) is kept.
      init_params: ``"random"`` (random responsibilities, the default) or
        ``"kmeans"`` (one-hot labels of K-means on the codes as numbers). Both
        average over many samples; starts on single samples (k-means++,
        random_from_data) would give maximum-likelihood probabilities of
        exactly 0 and 1, under which most samples are impossible.
      weights_init: optional starting weights (K,).
      probs_init: optional starting level probabilities (K, D, L).
      uniform_weights: keep the weights at 1/K.
      weight_concentration_prior: Dirichlet α ≥ 1 on the weights, a scalar or
        (K,); None for maximum likelihood.
      level_prior: Dirichlet β ≥ 1 on every θ_kd, a scalar or broadcastable to
        (K, D, L); None for maximum likelihood.
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
      probs_: (K, D, L) level probabilities.
      n_levels_: L.
      converged_, n_iter_, lower_bound_ (the final objective), lower_bounds_,
      n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import CategoricalMixture
      >>> X = np.array([[0, 0], [0, 1], [2, 2], [2, 1]] * 5)
      >>> cm = CategoricalMixture(2, level_prior=2.0, random_state=0).fit(X)
      >>> cm.probs_.shape
      (2, 2, 3)
    """

    # Seeding on single samples puts maximum-likelihood probabilities at 0 and
    # 1, where most other samples have zero likelihood: only starts that
    # average over many samples are offered.
    _missing_capable = True
    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "allow_nan": ["boolean"],
        "n_levels": [Interval(Integral, 1, None, closed="left"), None],
        "init_params": [StrOptions({"random", "kmeans"})],
        "probs_init": ["array-like", None],
        "uniform_weights": ["boolean"],
        "weight_concentration_prior": [
            Interval(Real, 1.0, None, closed="left"),
            "array-like",
            None,
        ],
        "level_prior": [Interval(Real, 1.0, None, closed="left"), "array-like", None],
    }
    _nonfinite_message = (
        "Fitting the categorical mixture failed: every restart reached a "
        "non-finite log-likelihood (some samples became impossible under every "
        "component). Try init_params='random', fewer components, or a "
        "level_prior > 1."
    )

    def __init__(
        self,
        n_components=1,
        *,
        n_levels=None,
        tol=1e-3,
        max_iter=100,
        n_init=1,
        init_params="random",
        weights_init=None,
        probs_init=None,
        uniform_weights=False,
        weight_concentration_prior=None,
        level_prior=None,
        random_state=None,
        allow_nan=False,
    ):
        self.n_components = n_components
        self.n_levels = n_levels
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.probs_init = probs_init
        self.uniform_weights = uniform_weights
        self.weight_concentration_prior = weight_concentration_prior
        self.level_prior = level_prior
        self.random_state = random_state
        self.allow_nan = allow_nan

    def _n_levels(self, X: np.ndarray | None) -> int:
        """L: ``n_levels``, else ``probs_init``'s last axis, else largest code + 1.

        Codes are checked against it afterwards (``family.check_data``).
        """
        if X is None:
            return self.n_levels_
        if self.n_levels is not None:
            return int(self.n_levels)
        if self.probs_init is not None and np.ndim(self.probs_init) == 3:
            return int(np.shape(self.probs_init)[2])
        return max(int(np.nanmax(X)) + 1, 1)

    def _make_family(self, X: np.ndarray | None) -> Categorical:
        n_features = self.n_features_in_ if X is None else X.shape[1]
        n_levels = self._n_levels(X)
        # Priors at their full shapes, (K,) and (K, D, L): a scalar and an
        # array prior then share one compiled fit.
        alpha = None
        if self.weight_concentration_prior is not None:
            shape = (self.n_components,)
            alpha = _check_prior(
                self.weight_concentration_prior, "weight_concentration_prior", shape
            )
        beta = None
        if self.level_prior is not None:
            shape = (self.n_components, n_features, n_levels)
            beta = _check_prior(self.level_prior, "level_prior", shape)
        return Categorical(
            n_levels=n_levels,
            weight_concentration=alpha,
            level_prior=beta,
            uniform_weights=bool(self.uniform_weights),
        )

    def _user_params(self, X: np.ndarray, family: Categorical) -> dict:
        user = {}
        if self.weights_init is not None:
            if self.uniform_weights:
                raise ValueError(
                    "weights_init cannot be combined with uniform_weights=True"
                )
            user["weights"] = _check_distributions(
                self.weights_init, "weights_init", (self.n_components,)
            )
        if self.probs_init is not None:
            shape = (self.n_components, X.shape[1], family.n_levels)
            user["probs"] = _check_distributions(self.probs_init, "probs_init", shape)
        return user

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        # scikit-learn's wording for the estimators tagged ``positive_only``,
        # which its users and its checks match on.
        if X.size and X.min() < 0:
            raise ValueError(
                "Negative values in data passed to CategoricalMixture: it needs "
                f"codes 0 … L − 1, got {X.min():g}"
            )
        return X

    def __sklearn_tags__(self):
        # As scikit-learn's CategoricalNB: ordinal codes, non-negative.
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True
        tags.input_tags.positive_only = True
        return tags

    def _set_fitted(self, params: CategoricalParams, dtype) -> None:
        self.weights_ = params.weights
        self.probs_ = params.probs
        self.n_levels_ = params.probs.shape[-1]

    def _fitted_params(self) -> CategoricalParams:
        return CategoricalParams(self.weights_, self.probs_)

    def _component_axes(self) -> CategoricalParams:
        return CategoricalParams(True, True)

    def _draw(self, rng, labels):
        # Codes in 0 … L − 1 by inverse CDF per feature: the code is the number
        # of cumulative probabilities below a uniform draw.
        cumulative = np.cumsum(self.probs_.astype(np.float64)[labels], axis=-1)
        uniform = rng.random_sample((labels.shape[0], self.probs_.shape[1], 1))
        codes = np.sum(uniform * cumulative[..., -1:] > cumulative, axis=-1)
        return np.minimum(codes, self.n_levels_ - 1)
