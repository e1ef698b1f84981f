"""``GammaMixture``: a mixture of gammas for positive data, fitted by generalized EM."""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np

from jaxmix.engine.generalized import GeneralizedMStep
from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    check_is_fitted,
    check_weights_init,
)
from jaxmix.families.gamma import Gamma, GammaParams


def _check_positive(values, name: str, n_components: int, n_features: int):
    """A (K, D) array of finite positive values, as float64."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n_components, n_features):
        raise ValueError(
            f"{name} must have shape ({n_components}, {n_features}), got {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinity")
    if values.min() <= 0:
        raise ValueError(f"{name} must be > 0, got {values.min():g}")
    return values


class GammaMixture(MixtureEstimator):
    r"""Mixture of gamma distributions for positive data, fitted by generalized EM.

    Each component is a product of independent gammas with shapes α_k
    (``shapes_``) and rates β_k (``rates_``), so feature d of component k has
    mean m_kd = α_kd / β_kd (``means_``) and variance α_kd / β_kd²:

    .. math::
        \log p(x \mid α_k, β_k) = Σ_d α_{kd} \log β_{kd} − \log Γ(α_{kd})
            + (α_{kd} − 1) \log x_d − β_{kd} x_d.

    The shape has no closed-form maximiser, so each EM iteration sets the
    weights in closed form, π_k = N_k / N, and raises the expected
    log-likelihood over the shapes and means by ``m_step_iter`` L-BFGS steps
    (in log α and log m, where the gamma's Fisher information is diagonal),
    keeping the old values when the steps do not raise it: the log-likelihood
    never decreases (generalized EM, see :mod:`jaxmix.engine.generalized`).
    Data must be positive and finite. The ``n_init`` restarts run as one
    vmapped compiled program; float32 data is fitted in float32, everything
    else in float64.

    Args:
      n_components: number of mixture components K.
      tol: convergence threshold on the change of the mean log-likelihood.
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final log-likelihood) is
        kept.
      init_params: ``"kmeans"`` (the default), ``"k-means++"``, ``"random"`` or
        ``"random_from_data"``: responsibilities turned into shapes and means
        by matching each component's mean and variance. A component seeded on
        one sample (``"k-means++"``, ``"random_from_data"``) starts narrow, at
        shape 1000.
      weights_init: optional starting weights (K,).
      shapes_init: optional starting shapes (K, D), > 0.
      means_init: optional starting means (K, D), > 0 (starting rates are
        ``shapes_init / means_init``). The model's own coordinates are shape
        and mean, so either one alone replaces that field of each computed
        start and keeps the other.
      m_step_iter: L-BFGS steps on the shapes and means per EM iteration. More
        steps make each iteration closer to a full M-step (fewer iterations)
        but dearer; changing it compiles a new program.
      random_state: None, an int or a ``numpy.random.RandomState``.
      warm_start: start from the previous fit's parameters.
      verbose, verbose_interval: print a per-iteration report after the fit.

    Attributes:
      weights_: (K,) mixing weights.
      shapes_: (K, D) gamma shapes α.
      means_: (K, D) the components' means m = α / β, in units of x.
      rates_: (K, D) gamma rates β = α / m (inverse scales, in inverse units
        of x), from ``shapes_`` and ``means_``.
      converged_, n_iter_, lower_bound_ (the final mean log-likelihood),
      lower_bounds_, n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import GammaMixture
      >>> rng = np.random.default_rng(0)
      >>> X = np.concatenate([rng.gamma(4.0, 0.25, (300, 1)),
      ...                     rng.gamma(40.0, 0.5, (300, 1))])
      >>> gm = GammaMixture(2, random_state=0).fit(X)
      >>> np.sort(gm.means_[:, 0]).round(0)
      array([ 1., 20.])
    """

    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "shapes_init": ["array-like", None],
        "means_init": ["array-like", None],
        "m_step_iter": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
    }
    _nonfinite_message = (
        "Fitting the gamma mixture failed: every restart reached a non-finite "
        "log-likelihood or parameters. Try fewer components, another "
        "init_params, or rescale the data."
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
        shapes_init=None,
        means_init=None,
        m_step_iter=10,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.shapes_init = shapes_init
        self.means_init = means_init
        self.m_step_iter = m_step_iter
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    def _make_family(self, X: np.ndarray | None) -> Gamma:
        del X  # no priors, nothing taken from the data
        return Gamma(generalized_m_step=GeneralizedMStep(steps=int(self.m_step_iter)))

    def _user_params(self, X: np.ndarray, family: Gamma) -> dict:
        del family
        n_features = X.shape[1]
        user = {}
        if self.weights_init is not None:
            user["weights"] = check_weights_init(self.weights_init, self.n_components)
        for field, value in (("shapes", self.shapes_init), ("means", self.means_init)):
            if value is not None:
                user[field] = _check_positive(
                    value, f"{field}_init", self.n_components, n_features
                )
        return user

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        # scikit-learn's wording for the estimators tagged ``positive_only``,
        # which its users and its checks match on; zeros (outside the gammas'
        # support too) are refused by the family's own check.
        if X.size and X.min() < 0:
            raise ValueError(
                "Negative values in data passed to GammaMixture: a gamma mixture "
                f"needs positive data, got {X.min():g}"
            )
        return X

    def __sklearn_tags__(self):
        # Positive data only. scikit-learn has no tag for strictly positive
        # input: with this one its checks feed data shifted to a minimum of 0,
        # which the family refuses (the project's check run shifts it to 1).
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _set_fitted(self, params: GammaParams, dtype) -> None:
        self.weights_ = params.weights
        self.shapes_ = params.shapes
        self.means_ = params.means
        self.rates_ = (params.shapes / params.means).astype(dtype)

    def _fitted_params(self) -> GammaParams:
        # The family's own coordinates (shape, mean): a model restored from
        # its attributes scores and restarts from exactly the fitted point.
        return GammaParams(self.weights_, self.shapes_, self.means_)

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k m_k`, shape (D,)."""
        check_is_fitted(self)
        return self.weights_ @ self.means_

    def _draw(self, rng, labels):
        shapes = self.shapes_[labels].astype(np.float64)
        return rng.gamma(shapes, 1.0 / self.rates_[labels].astype(np.float64))
