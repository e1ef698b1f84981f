"""``GaussianMixture``: scikit-learn's estimator, fitted by jaxmix's engine."""

from __future__ import annotations

import functools
from numbers import Integral, Real
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix import mixture
from jaxmix.estimators.base import MixtureEstimator, component_bucket
from jaxmix.estimators.validation import (
    Interval,
    StrOptions,
    check_is_fitted,
    check_real,
    precision,
)
from jaxmix.families import covariance_kernels
from jaxmix.families.gaussian import Gaussian, GaussianParams


def _check_weights(weights, n_components: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_components,):
        raise ValueError(
            "The parameter 'weights' should have the shape of "
            f"({n_components},), but got {weights.shape}: weights_init needs one "
            "weight per component"
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights_init contains NaN or infinity")
    if weights.min() < 0 or weights.max() > 1:
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max "
            f"value {weights.max():.5f}, min value {weights.min():.5f}"
        )
    if not np.allclose(weights.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(
            "The parameter 'weights' should be normalized, but got "
            f"sum(weights) = {weights.sum():.5f}"
        )
    return weights


def _check_means(means, n_components: int, n_features: int) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    if means.shape != (n_components, n_features):
        raise ValueError(
            "The parameter 'means' should have the shape of "
            f"({n_components}, {n_features}), but got {means.shape}: means_init "
            "needs one row per component and one column per feature"
        )
    if not np.all(np.isfinite(means)):
        raise ValueError("means_init contains NaN or infinity")
    return means


def _check_precisions(
    precisions, covariance_type: str, n_components: int, n_features: int
) -> np.ndarray:
    precisions = np.asarray(precisions, dtype=np.float64)
    kernel = covariance_kernels.KERNELS[covariance_type]
    shape = kernel.shape(n_components, n_features)
    if precisions.shape != shape:
        raise ValueError(
            f"The parameter '{covariance_type} precision' should have the shape "
            f"of {shape}, but got {precisions.shape} (precisions_init for "
            f"covariance_type={covariance_type!r})"
        )
    if not np.all(np.isfinite(precisions)):
        raise ValueError("precisions_init contains NaN or infinity")
    kernel.check_precisions(precisions, n_features)
    return precisions


@functools.partial(jax.jit, static_argnames="covariance_type")
def _precision_factors(covariances, covariance_type: str):
    """Cholesky factors of the precisions, and the precisions: one compiled program.

    Run eagerly, the factorisation's loops would compile anew at every fit.
    """
    kernel = covariance_kernels.KERNELS[covariance_type]
    prec_chol = kernel.precisions_cholesky(covariances)
    return prec_chol, kernel.precisions(prec_chol)


def _check_weight_concentration(alpha, n_components: int) -> np.ndarray | None:
    """Dirichlet α on the weights: None, or finite numbers ≥ 1, scalar or (K,)."""
    if alpha is None:
        return None
    if isinstance(alpha, bool):
        raise ValueError("weight_concentration_prior must be a number or array")
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape not in ((), (n_components,)):
        raise ValueError(
            "weight_concentration_prior must be a scalar or have shape "
            f"({n_components},), got {alpha.shape}"
        )
    if not np.all(np.isfinite(alpha)) or np.any(alpha < 1):
        raise ValueError(
            "weight_concentration_prior must be finite and >= 1 (the MAP "
            f"weights exist only for Dirichlet concentrations >= 1), got {alpha}"
        )
    return alpha


def _check_mean_precision(kappa) -> float:
    """κ₀ > 0 (scikit-learn's default 1)."""
    if kappa is None:
        return 1.0
    kappa = check_real(kappa, "mean_precision_prior", 0.0)
    if kappa <= 0:
        raise ValueError(f"mean_precision_prior must be positive, got {kappa}")
    return kappa


def _check_mean_prior(mean, X: np.ndarray) -> np.ndarray:
    """m₀, shape (D,) (default: the data mean)."""
    if mean is None:
        mean = X.mean(axis=0)
    mean = np.asarray(mean, dtype=np.float64)
    n_features = X.shape[1]
    if mean.shape != (n_features,):
        raise ValueError(
            f"mean_prior must have shape ({n_features},), got {mean.shape}"
        )
    if not np.all(np.isfinite(mean)):
        raise ValueError("mean_prior contains NaN or infinity")
    return mean


def _check_degrees_of_freedom(nu, n_features: int) -> float:
    """ν₀ > D − 1 (default D)."""
    if nu is None:
        return float(n_features)
    nu = check_real(nu, "degrees_of_freedom_prior", -np.inf)
    if nu <= n_features - 1:
        raise ValueError(
            f"degrees_of_freedom_prior must be greater than n_features - 1 = "
            f"{n_features - 1}, got {nu}"
        )
    return nu


def _check_covariance_prior(psi, covariance_type: str, X: np.ndarray):
    """Ψ₀ in the covariance type's shape (default: from the data covariance)."""
    kernel = covariance_kernels.KERNELS[covariance_type]
    if psi is None:
        psi = kernel.default_covariance_prior(X)
    return kernel.check_covariance_prior(psi, X.shape[1])


def _resolve_priors(estimator, X: np.ndarray) -> dict:
    """Checked MAP priors for the Gaussian family, with scikit-learn's defaults.

    Returns the family's keyword arguments (``weight_concentration``, and
    ``mean_precision``, ``mean_prior``, ``degrees_of_freedom``,
    ``covariance_prior`` if any of them is given), in the data's dtype; absent
    or None where maximum likelihood. If any of the four normal-inverse-Wishart
    priors is given, the others default as in ``BayesianGaussianMixture``:
    κ₀ = 1, m₀ = the data mean, ν₀ = D, Ψ₀ = the data covariance (its diagonal
    for ``diag``, the mean variance for ``spherical``).
    """
    dtype = X.dtype
    alpha = _check_weight_concentration(
        estimator.weight_concentration_prior, estimator.n_components
    )
    priors = {"weight_concentration": None if alpha is None else alpha.astype(dtype)}
    normal_inverse_wishart = (
        estimator.mean_precision_prior,
        estimator.mean_prior,
        estimator.degrees_of_freedom_prior,
        estimator.covariance_prior,
    )
    if all(value is None for value in normal_inverse_wishart):
        return priors
    kappa = _check_mean_precision(estimator.mean_precision_prior)
    mean = _check_mean_prior(estimator.mean_prior, X)
    nu = _check_degrees_of_freedom(estimator.degrees_of_freedom_prior, X.shape[1])
    psi = _check_covariance_prior(
        estimator.covariance_prior, estimator.covariance_type, X
    )
    priors.update(
        mean_precision=np.asarray(kappa, dtype),
        mean_prior=mean.astype(dtype),
        degrees_of_freedom=np.asarray(nu, dtype),
        covariance_prior=np.asarray(psi, dtype),
    )
    return priors


class GaussianMixture(MixtureEstimator):
    """Gaussian mixture fitted by EM, with scikit-learn's interface.

    Parameters, attributes and methods follow
    ``sklearn.mixture.GaussianMixture``; the ``n_init`` restarts run as one
    vmapped compiled program, and float32 data is fitted in float32, float64
    data in float64 (JAX's global x64 flag is left alone). ``fit`` also accepts
    ``sample_weight``.

    Args:
      n_components: number of mixture components K.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      tol: convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to every covariance diagonal.
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final objective) is kept.
      init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or
        ``"random_from_data"``.
      weights_init, means_init, precisions_init: optional user starts.
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
      warm_start: start from the previous fit's parameters.
      fixed_params: parameters held at their ``*_init`` values through the
        fit: None (nothing fixed), a name or list of names among
        ``"weights"``, ``"means"``, ``"precisions"`` (every component), or a
        dict ``{name: mask}`` with a (K,) boolean mask of components (or a
        mask of the parameter's shape; ``diag`` and ``spherical`` means may
        be fixed feature by feature). Values come from ``weights_init``,
        ``means_init`` and ``precisions_init``. Each EM step maximises over
        the free parameters only: the free weights share the mass the fixed
        ones leave, and covariances are centred at fixed means. The fitted
        attributes keep the fixed values exactly (covariances as the
        inverses of ``precisions_init``). Not supported by ``partial_fit``,
        ``fit_many`` or streamed fits.
      verbose, verbose_interval: print a per-iteration report after the fit.
      weight_concentration_prior: Dirichlet α ≥ 1 on the weights (scalar or
        (K,)); None for maximum likelihood.
      mean_precision_prior, mean_prior, degrees_of_freedom_prior,
        covariance_prior: κ₀ > 0, m₀ (D,), ν₀ > D − 1 and Ψ₀ (full/tied (D, D),
        diag (D,), spherical a scalar) of a normal-inverse-Wishart prior on the
        means and covariances (see :class:`jaxmix.families.Gaussian`). All None
        (the default) is maximum likelihood; if any is given, the others
        default as in scikit-learn's ``BayesianGaussianMixture``: κ₀ = 1, m₀ the
        data mean, ν₀ = D, Ψ₀ the data covariance. With priors EM maximises the
        posterior, and ``lower_bound_`` is the mean log-likelihood plus the log
        prior divided by N. The priors are traced: changing their values does
        not recompile.

    Attributes:
      weights_, means_, covariances_, precisions_, precisions_cholesky_: the
        fitted parameters in scikit-learn's shapes.
      converged_, n_iter_, lower_bound_, lower_bounds_, n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import GaussianMixture
      >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], float)
      >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
      >>> np.sort(gm.means_[:, 0]).round(2)
      array([ 1., 10.])
    """

    _missing_capable = True
    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "allow_nan": ["boolean"],
        "device_budget": [Interval(Integral, 0, None, closed="left"), None],
        "fixed_params": "no_validation",  # checked at fit, with the *_init arrays
        "covariance_type": [StrOptions(set(covariance_kernels.COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "weight_concentration_prior": [
            Interval(Real, 1.0, None, closed="left"),
            "array-like",
            None,
        ],
        "mean_precision_prior": [Interval(Real, 0.0, None, closed="neither"), None],
        "mean_prior": ["array-like", None],
        # > n_features - 1, checked against the data
        "degrees_of_freedom_prior": [Interval(Real, 0.0, None, closed="neither"), None],
        "covariance_prior": [
            Interval(Real, 0.0, None, closed="neither"),
            "array-like",
            None,
        ],
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        device_budget=None,
        fixed_params=None,
        allow_nan=False,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.device_budget = device_budget
        self.fixed_params = fixed_params
        self.allow_nan = allow_nan

    _fixable: ClassVar[dict[str, tuple[str, str]]] = {
        "weights": ("weights", "weights_init"),
        "means": ("means", "means_init"),
        "precisions": ("covariances", "precisions_init"),
    }

    def _make_family(self, X: np.ndarray | None) -> Gaussian:
        # Priors are checked against the data, and their data-dependent
        # defaults (m₀, Ψ₀) taken from it; a restored model keeps none.
        priors = {} if X is None else _resolve_priors(self, X)
        return Gaussian(
            covariance_type=self.covariance_type, reg_covar=self.reg_covar, **priors
        )

    def _user_params(self, X: np.ndarray, family: Gaussian) -> dict:
        del family
        n_features = X.shape[1]
        user = {}
        if self.weights_init is not None:
            user["weights"] = _check_weights(self.weights_init, self.n_components)
        if self.means_init is not None:
            user["means"] = _check_means(self.means_init, self.n_components, n_features)
        if self.precisions_init is not None:
            precisions = _check_precisions(
                self.precisions_init,
                self.covariance_type,
                self.n_components,
                n_features,
            )
            user["covariances"] = covariance_kernels.covariances_from_precisions(
                precisions, self.covariance_type
            )
        return user

    def _set_fitted(self, params: GaussianParams, dtype) -> None:
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        covariances, n_components = params.covariances, len(params.weights)
        tied = self.covariance_type == "tied"
        if not tied:  # padded like the fit, so that one program serves every K
            n_features = params.means.shape[-1]  # D factorisations of D × D
            size = component_bucket(n_components, n_features, n_features)
            extra = np.repeat(covariances[:1], size - n_components, axis=0)
            covariances = np.concatenate([covariances, extra])
        keep = slice(None) if tied else slice(n_components)
        with precision(dtype):
            prec_chol, precisions = _precision_factors(
                covariances, self.covariance_type
            )
            self.precisions_cholesky_ = np.asarray(prec_chol, dtype=dtype)[keep]
            self.precisions_ = np.asarray(precisions, dtype=dtype)[keep]

    def _fitted_params(self) -> GaussianParams:
        return GaussianParams(self.weights_, self.means_, self.covariances_)

    def _component_axes(self) -> GaussianParams:
        return GaussianParams(True, True, self.covariance_type != "tied")

    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the model with one batch of data: one step of online EM.

        The first call initialises the model on this batch (``init_params`` or
        the ``*_init`` arrays; ``n_init`` and ``warm_start`` are not used) and
        fixes ``n_features_in_`` and the precision; every call, the first
        included, then takes one step of online (stepwise) EM with the batch
        (:mod:`jaxmix.engine.online`): running statistics per sample,
        s ← s + γ_t (s̄(batch) − s) with γ_t = (t + t₀)^(−α), t₀ = 0, α = 0.7,
        and the weights, means and covariances from them. The result
        approximates the EM fit of all the batches seen; ``fit`` gives the
        exact one when the data fits in memory. The fitted attributes are
        updated after every call: ``n_iter_`` counts the steps,
        ``lower_bounds_`` holds each batch's mean log-likelihood (plus log
        prior / n with priors) before its step, ``lower_bound_`` the last one,
        and ``converged_`` is False (online EM has no convergence test). With
        priors, the statistics are scaled to all the sample weight seen so
        far, against which the prior weighs.

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
          >>> from jaxmix import GaussianMixture
          >>> X = np.random.default_rng(0).normal(size=(1000, 2))
          >>> gm = GaussianMixture(2, random_state=0)
          >>> for batch in np.array_split(X, 5):
          ...     gm = gm.partial_fit(batch)
          >>> gm.n_iter_, gm.means_.shape
          (5, (2, 2))
        """
        del y
        self._partial_fit(X, sample_weight)
        return self

    def _fitted_jax(self):
        return jax.tree.map(jnp.asarray, self._fitted_params())

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k μ_k`, shape (D,)."""
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(mixture.mean(self._fitted_jax()))

    def covariance(self) -> np.ndarray:
        r"""Covariance of the fitted mixture, shape (D, D).

        :math:`Cov[x] = Σ_k π_k (Σ_k + μ_k μ_kᵀ) − E[x]E[x]ᵀ`, computed in the
        centred form :math:`Σ_k π_k Σ_k + Σ_k π_k (μ_k − E[x])(μ_k − E[x])ᵀ`.
        """
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(
                mixture.covariance(self._fitted_jax(), self.covariance_type)
            )

    def impute(self, X) -> np.ndarray:
        """Fill the NaN entries of X with their conditional mean under the model.

        Each row's missing features get E[x_missing | x_observed], the mean of
        the conditional mixture (weights re-weighted by how well each component
        explains the observed features); a row with nothing observed gets the
        mixture mean.

        Args:
          X: data (N, D), NaN marking missing values.

        Returns:
          A copy of X without NaN.
        """
        check_is_fitted(self)
        X = np.asarray(X, dtype=self.means_.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have shape (N, {self.n_features_in_}), got {X.shape}"
            )
        with precision(self.means_.dtype):
            return mixture.impute(self._fitted_jax(), self.covariance_type, X)

    def _draw(self, rng, labels):
        kernel = covariance_kernels.KERNELS[self.covariance_type]
        counts = np.bincount(labels, minlength=self.n_components)
        return np.vstack(
            [
                kernel.sample_numpy(rng, self.means_[k], self.covariances_, k, count)
                for k, count in enumerate(counts)
            ]
        )
