"""``BernoulliMixture``: a mixture of Bernoullis for binary data, fitted by EM."""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np

from jaxmix import mixture
from jaxmix.estimators.base import MixtureEstimator
from jaxmix.estimators.validation import (
    Interval,
    StrOptions,
    check_is_fitted,
    check_weights_init,
    precision,
)
from jaxmix.families.bernoulli import Bernoulli, BernoulliParams


def _check_means(means, n_components: int, n_features: int) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    if means.shape != (n_components, n_features):
        raise ValueError(
            f"means_init must have shape ({n_components}, {n_features}), "
            f"got {means.shape}"
        )
    if not np.all(np.isfinite(means)):
        raise ValueError("means_init contains NaN or infinity")
    if means.min() < 0 or means.max() > 1:
        raise ValueError(
            "means_init holds Bernoulli probabilities and must be in [0, 1], but "
            f"got min value {means.min():.5f}, max value {means.max():.5f}"
        )
    return means


def _check_prior_values(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Finite numbers ≥ 1 broadcastable to ``shape`` (MAP needs the mode inside)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number or an array, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    try:
        np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to shape {shape}, got shape "
            f"{array.shape}"
        ) from None
    if not np.all(np.isfinite(array)) or np.any(array < 1):
        raise ValueError(
            f"{name} must be finite and >= 1 (below 1 the prior density is "
            f"unbounded at the boundary and has no interior mode), got {value!r}"
        )
    return array


def _check_mean_prior(prior, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A Beta prior ``(a, b)``, each finite ≥ 1 and broadcastable to ``shape``."""
    if (
        isinstance(prior, (str, bytes))
        or not hasattr(prior, "__len__")
        or len(prior) != 2
    ):
        raise ValueError(
            f"mean_prior must be a pair (a, b) of Beta parameters, got {prior!r}"
        )
    return tuple(
        _check_prior_values(value, f"mean_prior {name}", shape)
        for name, value in zip(("a", "b"), prior, strict=True)
    )


class BernoulliMixture(MixtureEstimator):
    r"""Mixture of multivariate Bernoulli distributions, fitted by (MAP) EM.

    Each component is a product of independent Bernoullis with means θ_k
    (``means_``, probabilities); data must lie in [0, 1] (binary data, or
    fractions read as expected counts). With ``weight_concentration_prior`` α
    (a Dirichlet prior on the weights) and/or ``mean_prior=(a, b)`` (a Beta(a, b)
    prior on every θ_kd), EM maximises the posterior instead of the likelihood:

    .. math::
        π_k = \frac{N_k + α − 1}{N + Kα − K}, \qquad
        θ_{kd} = \frac{Σ_n r_{nk} x_{nd} + a − 1}{N_k + a + b − 2}.

    Maximum-likelihood means often reach exactly 0 or 1, and then a new sample
    with the other value has zero density (``score_samples`` is −inf); a Beta
    prior with a, b > 1 keeps every mean strictly inside (0, 1). The ``n_init``
    restarts run as one vmapped compiled program; float32 data is fitted in
    float32, everything else in float64.

    Args:
      n_components: number of mixture components K.
      tol: convergence threshold on the change of the objective (mean
        log-likelihood, plus log prior / N with priors).
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final objective) is kept.
      init_params: ``"random"`` (random responsibilities) or ``"kmeans"``
        (one-hot labels of K-means); both average over many samples, so the
        starting means are not pinned at 0 or 1 by a single sample.
      weights_init: optional starting weights (K,).
      means_init: optional starting means (K, D), in [0, 1].
      uniform_weights: keep the weights at 1/K.
      weight_concentration_prior: Dirichlet α ≥ 1, a scalar or (K,); None for
        maximum likelihood.
      mean_prior: ``(a, b)`` Beta parameters ≥ 1, each a scalar or broadcastable
        to (K, D); None for maximum likelihood.
      random_state: None, an int or a ``numpy.random.RandomState``.
      allow_nan: if True, NaN entries of X are missing values (missing at
        random): ``fit`` runs EM for the observed-data likelihood (each sample
        contributes through its observed features), the scores are
        observed-data log-likelihoods, and the initialisation runs on the data
        with each missing entry replaced by its feature's observed mean. A row
        with no observed value is an error. If False (the default), NaN is an
        error, as in scikit-learn.
      device_budget: None (the data is always copied to the device), or a
        number of bytes: ``fit`` on data larger than it (e.g. a
        ``numpy.memmap``) is streamed: restarts initialised on a random
        subsample of 65,536 rows, then exact EM over the data read in chunks
        (:func:`jaxmix.fit_stream`), all restarts sharing each pass. Only
        ``fit`` streams; ``predict`` and ``score`` copy their data.
      binarize: None (X must already lie in [0, 1]) or a threshold: features
        above it become 1 and the others 0, in ``fit`` and in every later
        call, as in scikit-learn's ``BernoulliNB``.

    Attributes:
      weights_: (K,) mixing weights.
      means_: (K, D) Bernoulli means (probabilities).
      converged_, n_iter_, lower_bound_ (the final objective), lower_bounds_,
      n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import BernoulliMixture
      >>> X = np.array([[1, 1, 0, 0]] * 5 + [[0, 0, 1, 1]] * 5)
      >>> bm = BernoulliMixture(2, mean_prior=(2, 2), random_state=0).fit(X)
      >>> np.sort(bm.means_[:, 0]).round(2)
      array([0.14, 0.86])
    """

    # Seeding on single samples ("k-means++", "random_from_data") puts maximum-
    # likelihood means at exactly 0 or 1, where most other samples have zero
    # likelihood: only starts that average over many samples are offered.
    _missing_capable = True
    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "allow_nan": ["boolean"],
        "device_budget": [Interval(Integral, 0, None, closed="left"), None],
        "init_params": [StrOptions({"random", "kmeans"})],
        "means_init": ["array-like", None],
        "uniform_weights": ["boolean"],
        "weight_concentration_prior": [
            Interval(Real, 1.0, None, closed="left"),
            "array-like",
            None,
        ],
        "mean_prior": "no_validation",  # a pair (a, b), checked in _make_family
        "binarize": [Interval(Real, None, None, closed="neither"), None],
    }
    _nonfinite_message = (
        "Fitting the Bernoulli mixture failed: every restart reached a non-finite "
        "log-likelihood (some samples became impossible under every component). "
        "Try init_params='random', fewer components, or a mean_prior=(a, b) with "
        "a, b > 1."
    )

    def __init__(
        self,
        n_components=1,
        *,
        tol=1e-3,
        max_iter=100,
        n_init=1,
        init_params="random",
        weights_init=None,
        means_init=None,
        uniform_weights=False,
        weight_concentration_prior=None,
        mean_prior=None,
        random_state=None,
        binarize=None,
        device_budget=None,
        allow_nan=False,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.uniform_weights = uniform_weights
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_prior = mean_prior
        self.random_state = random_state
        self.binarize = binarize
        self.device_budget = device_budget
        self.allow_nan = allow_nan

    def _make_family(self, X: np.ndarray | None) -> Bernoulli:
        n_features = self.n_features_in_ if X is None else X.shape[1]
        # Priors at their full shapes, (K,) and (K, D): a scalar and an array
        # prior then share one compiled fit.
        alpha = None
        if self.weight_concentration_prior is not None:
            shape = (self.n_components,)
            alpha = np.broadcast_to(
                _check_prior_values(
                    self.weight_concentration_prior, "weight_concentration_prior", shape
                ),
                shape,
            )
        shape = (self.n_components, n_features)
        beta = None
        if self.mean_prior is not None:
            beta = tuple(
                np.broadcast_to(value, shape)
                for value in _check_mean_prior(self.mean_prior, shape)
            )
        return Bernoulli(
            weight_concentration=alpha,
            mean_prior=beta,
            uniform_weights=bool(self.uniform_weights),
        )

    def _user_params(self, X: np.ndarray, family: Bernoulli) -> dict:
        del family
        user = {}
        if self.weights_init is not None:
            if self.uniform_weights:
                raise ValueError(
                    "weights_init cannot be combined with uniform_weights=True"
                )
            user["weights"] = check_weights_init(self.weights_init, self.n_components)
        if self.means_init is not None:
            user["means"] = _check_means(self.means_init, self.n_components, X.shape[1])
        return user

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        if self.binarize is None:
            return X
        # Missing values (NaN) stay missing.
        return np.where(np.isnan(X), np.nan, X > self.binarize).astype(X.dtype)

    def _set_fitted(self, params: BernoulliParams, dtype) -> None:
        self.weights_ = params.weights
        self.means_ = params.means

    def _fitted_params(self) -> BernoulliParams:
        return BernoulliParams(self.weights_, self.means_)

    def _component_axes(self) -> BernoulliParams:
        return BernoulliParams(True, True)

    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the model with one batch of data: one step of online EM.

        The first call initialises the model on this batch (``init_params`` or
        the ``*_init`` arrays; ``n_init`` and ``warm_start`` are not used) and
        fixes ``n_features_in_`` and the precision; every call, the first
        included, then takes one step of online (stepwise) EM with the batch
        (:mod:`jaxmix.engine.online`): running statistics per sample,
        s ← s + γ_t (s̄(batch) − s) with γ_t = (t + t₀)^(−α), t₀ = 0, α = 0.7,
        and the weights and means from them. The result approximates the EM fit
        of all the batches seen; ``fit`` gives the exact one when the data fits
        in memory. The fitted attributes are updated after every call:
        ``n_iter_`` counts the steps, ``lower_bounds_`` holds each batch's mean
        log-likelihood (plus log prior / n with priors) before its step,
        ``lower_bound_`` the last one, and ``converged_`` is False (online EM
        has no convergence test). With priors, the statistics are scaled to all
        the sample weight seen so far, against which the prior weighs.

        Called on a model fitted by ``fit`` (or loaded from a file), it
        starts from the fitted parameters with new running statistics, so
        its first step is one EM iteration on that batch. The online state is
        not saved by :mod:`jaxmix.io`: a loaded model continues the same way.
        Keep batches of similar sizes: every call takes one step whatever the
        batch's size.

        Args:
          X: a batch of data, shape (N, D), with the first batch's D.
          y: ignored.
          sample_weight: optional non-negative weights, shape (N,).

        Returns:
          self.

        Raises:
          ValueError: a batch with another number of features, NaN or
            infinity, or whose step is not finite.

        Examples:
          >>> import numpy as np
          >>> from jaxmix import BernoulliMixture
          >>> X = np.array([[1, 1, 0, 0]] * 50 + [[0, 0, 1, 1]] * 50)
          >>> X = np.random.default_rng(0).permutation(X)  # batches alike
          >>> bm = BernoulliMixture(2, mean_prior=(2, 2), random_state=0)
          >>> for batch in np.array_split(X, 4):
          ...     bm = bm.partial_fit(batch)
          >>> bm.n_iter_
          4
        """
        del y
        self._partial_fit(X, sample_weight)
        return self

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k θ_k`, shape (D,)."""
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(mixture.bernoulli_mean(self.weights_, self.means_))

    def covariance(self) -> np.ndarray:
        r"""Covariance of the fitted mixture, shape (D, D).

        :math:`Σ_k π_k (\operatorname{diag}(θ_k(1 − θ_k)) + θ_k θ_kᵀ) − E[x]E[x]ᵀ`,
        computed in centred form.
        """
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(mixture.bernoulli_covariance(self.weights_, self.means_))

    def _draw(self, rng, labels):
        uniform = rng.random_sample((labels.shape[0], self.means_.shape[1]))
        return uniform < self.means_[labels]
