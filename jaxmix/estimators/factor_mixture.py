"""``FactorMixture``: a mixture of factor analysers (or of probabilistic PCA)."""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import jax
import jax.numpy as jnp
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
from jaxmix.families.factor import (
    NOISE_KERNELS,
    NOISE_TYPES,
    FactorAnalyzer,
    FactorParams,
)
from jaxmix.families.gaussian import GaussianParams

#: Accelerated cycles of each start's weighted factor analysis (five passes
#: over the data each; see FactorAnalyzer.reference): a start needs to be
#: close to the weighted maximum, not at it, and on large data these passes
#: cost as much as EM iterations (measured: 26 cycles to the family's
#: default stopping rule at N = 20,000, D = 256, K = 4, q = 4 in float32).
_START_CYCLES = 10


def _check_finite(values, name: str, shape: tuple) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinity")
    return values


def canonical_loadings(loadings: np.ndarray, noise: np.ndarray) -> np.ndarray:
    r"""Loadings rotated to their canonical form (host-side, NumPy).

    Λ_k and Λ_k R (R orthogonal) are the same model. The canonical rotation
    makes :math:`Λ_kᵀ Ψ_k^{-1} Λ_k` diagonal with decreasing entries (the
    factors in order of their signal-to-noise ratio, as scikit-learn's
    ``FactorAnalysis`` without rotation gives them), and the largest entry
    of each column positive.

    Args:
      loadings: (K, D, q).
      noise: ψ per component and feature, (K, D).

    Returns:
      The rotated loadings, (K, D, q), float64.
    """
    loadings = np.asarray(loadings, dtype=np.float64)
    scaled = loadings / np.sqrt(noise)[..., None]
    _, rotations = np.linalg.eigh(np.swapaxes(scaled, -1, -2) @ scaled)
    rotated = loadings @ rotations[..., ::-1]
    rows = np.argmax(np.abs(rotated), axis=1)  # (K, q)
    signs = np.sign(np.take_along_axis(rotated, rows[:, None, :], axis=1))
    return rotated * np.where(signs == 0, 1.0, signs)


@jax.jit
def _posterior_means(family: FactorAnalyzer, params: FactorParams, X):
    """E[z | x_n, k], (N, K, q), from direct differences x_n − μ_k."""
    gain = family.posterior(params).gain
    return jnp.einsum("nkd,kdq->nkq", X[:, None, :] - params.means, gain)


class FactorMixture(MixtureEstimator):
    r"""Mixture of factor analysers fitted by EM (AECM), scikit-learn's interface.

    Component k generates :math:`x = μ_k + Λ_k z + ε` with q factors
    :math:`z \sim N(0, I_q)` and noise :math:`ε \sim N(0, Ψ_k)`, Ψ_k diagonal,
    so its covariance is :math:`Λ_kΛ_kᵀ + Ψ_k`: a Gaussian mixture whose
    covariances have D·q − q(q−1)/2 + D free numbers each instead of
    D(D+1)/2. The fit never forms a D×D matrix: an iteration costs
    O(N·K·D·q) (see :mod:`jaxmix.families.factor` for the updates). The
    ``n_init`` restarts run as one vmapped compiled program, and float32
    data is fitted in float32, float64 data in float64.

    Args:
      n_components: number of mixture components K.
      n_factors: number of factors q per component, 1 ≤ q < n_features.
      noise_type: ``"diag"`` (a diagonal Ψ_k per component: mixture of
        factor analysers), ``"tied_diag"`` (one diagonal Ψ shared by all
        components) or ``"isotropic"`` (Ψ_k = σ_k² I: mixture of
        probabilistic PCA).
      tol: convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to every noise variance.
      max_iter: maximum number of EM iterations.
      n_init: number of restarts; the best (highest final log-likelihood) is
        kept.
      init_params: ``"kmeans"`` (the default), ``"k-means++"``, ``"random"``
        or ``"random_from_data"``: responsibilities from which each
        component's start is a weighted factor-analysis fit (at most ten
        accelerated cycles of the updates at fixed responsibilities, five
        passes over the data each).
      weights_init: optional starting weights (K,).
      means_init: optional starting means (K, D).
      loadings_init: optional starting loadings (K, D, q).
      noise_variances_init: optional starting noise variances, > 0, in the
        noise type's shape: ``diag`` (K, D), ``tied_diag`` (D,),
        ``isotropic`` (K,). Starts given for some fields replace those
        fields of the computed start.
      random_state: None, an int or a ``numpy.random.RandomState``.
      warm_start: start from the previous fit's parameters.
      verbose, verbose_interval: print a per-iteration report after the fit.

    Attributes:
      weights_: (K,) mixing weights.
      means_: (K, D) component means.
      loadings_: (K, D, q) loadings Λ_k, in canonical rotation: Λ_kᵀΨ_k⁻¹Λ_k
        diagonal and decreasing, each column's largest entry positive.
      noise_variances_: the noise variances, shaped as ``noise_variances_init``.
      covariances_: (K, D, D) Λ_kΛ_kᵀ + Ψ_k, computed when read (D×D each).
      converged_, n_iter_, lower_bound_, lower_bounds_, n_features_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxmix import FactorMixture
      >>> rng = np.random.default_rng(0)
      >>> z = rng.normal(size=(400, 1))
      >>> X = np.r_[z[:200] @ [[1.0, 2.0, 3.0]], 10 + z[200:] @ [[3.0, -1.0, 1.0]]]
      >>> X = X + 0.1 * rng.normal(size=X.shape)
      >>> model = FactorMixture(2, n_factors=1, random_state=0).fit(X)
      >>> model.loadings_.shape, model.covariances_.shape
      ((2, 3, 1), (2, 3, 3))
    """

    _parameter_constraints: ClassVar[dict] = {
        **MixtureEstimator._parameter_constraints,
        "n_factors": [Interval(Integral, 1, None, closed="left")],
        "noise_type": [StrOptions(set(NOISE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "means_init": ["array-like", None],
        "loadings_init": ["array-like", None],
        "noise_variances_init": ["array-like", None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
    }
    _nonfinite_message = (
        "Fitting the mixture of factor analysers failed: every restart reached "
        "a non-finite log-likelihood or parameters (for instance a component "
        "collapsed on a few samples). Try fewer components or factors, increase "
        "reg_covar, or scale the input data."
    )

    def __init__(
        self,
        n_components=1,
        *,
        n_factors=1,
        noise_type="diag",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        loadings_init=None,
        noise_variances_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.n_factors = n_factors
        self.noise_type = noise_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.loadings_init = loadings_init
        self.noise_variances_init = noise_variances_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    def _make_family(self, X: np.ndarray | None) -> FactorAnalyzer:
        family = FactorAnalyzer(
            n_factors=int(self.n_factors),
            noise_type=self.noise_type,
            reg_covar=self.reg_covar,
            reference_steps=_START_CYCLES,
        )
        if X is not None:
            family._check_features(X.shape[1])
        return family

    def _user_params(self, X: np.ndarray, family: FactorAnalyzer) -> dict:
        n_components, n_features = self.n_components, X.shape[1]
        user = {}
        if self.weights_init is not None:
            user["weights"] = check_weights_init(self.weights_init, n_components)
        if self.means_init is not None:
            user["means"] = _check_finite(
                self.means_init, "means_init", (n_components, n_features)
            )
        if self.loadings_init is not None:
            shape = (n_components, n_features, family.n_factors)
            user["loadings"] = _check_finite(self.loadings_init, "loadings_init", shape)
        if self.noise_variances_init is not None:
            shape = family.noise.shape(n_components, n_features)
            noise = _check_finite(
                self.noise_variances_init,
                f"noise_variances_init (noise_type={self.noise_type!r})",
                shape,
            )
            if noise.min() <= 0:
                raise ValueError(
                    f"noise_variances_init must be > 0, got {noise.min():g}"
                )
            user["noise_variances"] = noise
        return user

    def _noise_per_feature(self, noise: np.ndarray, n_features: int) -> np.ndarray:
        kernel = NOISE_KERNELS[self.noise_type]
        return np.asarray(
            kernel.per_feature(np.asarray(noise), self.n_components, n_features)
        )

    def _set_fitted(self, params: FactorParams, dtype) -> None:
        self.weights_ = params.weights
        self.means_ = params.means
        noise = np.asarray(params.noise_variances)
        per_feature = self._noise_per_feature(noise, params.means.shape[1])
        self.loadings_ = canonical_loadings(params.loadings, per_feature).astype(dtype)
        self.noise_variances_ = noise

    def _fitted_params(self) -> FactorParams:
        return FactorParams(
            self.weights_, self.means_, self.loadings_, self.noise_variances_
        )

    @property
    def covariances_(self) -> np.ndarray:
        """Λ_kΛ_kᵀ + Ψ_k, (K, D, D), computed from the fitted parameters."""
        check_is_fitted(self)
        loadings = self.loadings_.astype(np.float64)
        psi = self._noise_per_feature(self.noise_variances_, self.n_features_in_)
        low_rank = loadings @ np.swapaxes(loadings, -1, -2)
        eye = np.eye(self.n_features_in_)
        return (low_rank + psi[..., None] * eye).astype(self.means_.dtype)

    def gaussian_params(self) -> GaussianParams:
        """The fitted model as full-covariance Gaussian mixture params.

        For :mod:`jaxmix.mixture` (moments, sampling, marginals,
        conditionals, imputation) with ``covariance_type="full"``; forms the
        (K, D, D) covariances.
        """
        check_is_fitted(self)
        return GaussianParams(
            jnp.asarray(self.weights_),
            jnp.asarray(self.means_),
            jnp.asarray(self.covariances_),
        )

    def mean(self) -> np.ndarray:
        r"""Mean of the fitted mixture, :math:`E[x] = Σ_k π_k μ_k`, shape (D,)."""
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(mixture.mean(self.gaussian_params()))

    def covariance(self) -> np.ndarray:
        r"""Covariance of the fitted mixture, shape (D, D).

        :math:`Σ_k π_k (Λ_kΛ_kᵀ + Ψ_k) + Σ_k π_k (μ_k − E[x])(μ_k − E[x])ᵀ`.
        """
        check_is_fitted(self)
        with precision(self.means_.dtype):
            return np.asarray(mixture.covariance(self.gaussian_params(), "full"))

    def impute(self, X) -> np.ndarray:
        """Fill the NaN entries of X with their conditional mean under the model.

        Each row's missing features get E[x_missing | x_observed] under the
        mixture (weights re-weighted by how well each component explains the
        observed features); a row with nothing observed gets the mixture mean.

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
            return mixture.impute(self.gaussian_params(), "full", X)

    def factor_scores(self, X) -> np.ndarray:
        r"""Posterior means of the factors, :math:`E[z | x_n, k]`, (N, K, q).

        :math:`M_k^{-1} Λ_kᵀ Ψ_k^{-1} (x_n − μ_k)` for every component, in the
        canonical rotation of ``loadings_``; weigh them by ``predict_proba``
        for the mixture's posterior mean of z.
        """
        X = self._validate_predict_input(X)
        with precision(X.dtype):
            params = jax.tree.map(jnp.asarray, self._fitted_params())
            return np.asarray(_posterior_means(self.family_, params, jnp.asarray(X)))

    def _draw(self, rng: np.random.RandomState, labels: np.ndarray) -> np.ndarray:
        """Samples of the given components by the generative process, x = μ + Λz + ε.

        ``labels`` are sorted; component by component, q factors and D noise
        values per sample (no D×D matrix).
        """
        n_features = self.n_features_in_
        psi = self._noise_per_feature(self.noise_variances_, n_features)
        counts = np.bincount(labels, minlength=self.n_components)
        blocks = []
        for k, count in enumerate(counts):
            loadings = self.loadings_[k].astype(np.float64)
            factors = rng.standard_normal((count, loadings.shape[1]))
            noise = rng.standard_normal((count, n_features)) * np.sqrt(psi[k])
            blocks.append(self.means_[k] + factors @ loadings.T + noise)
        return np.vstack(blocks)
