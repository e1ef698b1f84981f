"""What every scikit-learn-style mixture estimator shares.

Subclasses say how to build their family, check their parameters, turn user
``*_init`` arrays into params and export fitted params as attributes; this base
runs the restarts as one vmapped compiled fit, keeps the best, and provides the
scoring methods.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import batch, em, initialization
from jaxmix.estimators.validation import (
    ConvergenceWarning,
    ParamsMixin,
    check_array,
    check_int,
    check_option,
    check_real,
    check_sample_weight,
    jax_key,
    precision,
)


@jax.jit
def _log_joint_and_norm(family, params, X):
    log_prob = em.log_joint(family, params, X)
    return log_prob, jax.nn.logsumexp(log_prob, axis=1)


class MixtureEstimator(ParamsMixin):
    """Base of the mixture estimators (not for direct use)."""

    _init_methods: tuple[str, ...] = initialization.INIT_METHODS
    _params_type: type = tuple  # the family's params NamedTuple
    _param_fields: tuple[str, ...] = ()
    _nonfinite_message = (
        "Fitting the mixture model failed because some components have "
        "ill-defined empirical covariance (for instance caused by singleton "
        "or collapsed samples). Try to decrease the number of components, "
        "increase reg_covar, or scale the input data."
    )

    # -- what subclasses provide -------------------------------------------------
    def _family(self):
        raise NotImplementedError

    def _check_model_parameters(self, X: np.ndarray) -> None:
        """Subclass checks (init arrays, priors) after the common ones."""

    def _check_data(self, X: np.ndarray) -> None:
        """Subclass checks on the data itself (e.g. binary values)."""

    def _user_params(self, X: np.ndarray):
        """A dict of field -> array from the ``*_init`` arguments."""
        return {}

    def _set_fitted(self, params, dtype) -> None:
        raise NotImplementedError

    def _fitted_params(self):
        raise NotImplementedError

    # -- fitting -----------------------------------------------------------------
    def _check_parameters(self, X: np.ndarray) -> None:
        check_int(self.n_components, "n_components", 1)
        check_real(self.tol, "tol", 0.0)
        check_int(self.max_iter, "max_iter", 0)
        check_int(self.n_init, "n_init", 1)
        check_option(self.init_params, "init_params", self._init_methods)
        check_int(self.verbose, "verbose", 0)
        check_int(self.verbose_interval, "verbose_interval", 1)
        if X.shape[0] < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {X.shape[0]}"
            )
        self._check_model_parameters(X)

    def _validate_fit_input(self, X, sample_weight):
        X = check_array(X, ensure_min_samples=2)
        self._check_parameters(X)
        self._check_data(X)
        weights = check_sample_weight(sample_weight, X.shape[0], X.dtype)
        return X, weights

    def _fit(self, X, sample_weight=None):
        X, weights = self._validate_fit_input(X, sample_weight)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        family = self._family()
        with precision(X.dtype):
            data = jnp.asarray(X)
            weights_j = None if weights is None else jnp.asarray(weights)
            user = {
                field: jnp.asarray(value, data.dtype)
                for field, value in self._user_params(X).items()
            }
            if do_init and set(user) != set(self._param_fields):
                # Initialisation and EM of every restart in one program.
                results = self._initialize_and_fit(family, data, weights_j, user)
            else:
                if do_init:  # everything is given: nothing to initialise
                    start, initial_ll = self._params_type(**user), -np.inf
                else:
                    start = jax.tree.map(jnp.asarray, self._fitted_params())
                    initial_ll = self.lower_bound_
                n_init = self.n_init if do_init else 1
                starts = jax.tree.map(
                    lambda a: jnp.broadcast_to(a, (n_init, *a.shape)), start
                )
                results = batch.fit_and_select_jit(
                    family,
                    data,
                    starts,
                    self.tol,
                    weights_j,
                    initial_ll,
                    max_iter=self.max_iter,
                )
            results = jax.device_get(results)
        self._keep_best(results, X.dtype)
        self.n_features_in_ = X.shape[1]
        return X

    def _initialize_and_fit(self, family, data, weights, user) -> batch.RestartsResult:
        n_samples, n_features = data.shape
        keys = jax.random.split(jax_key(self.random_state), self.n_init)
        group = min(
            self.n_init,
            batch.default_batch_size(n_samples, self.n_components, n_features),
        )
        return batch.initialize_and_fit_jit(
            family,
            data,
            keys,
            self.tol,
            weights,
            user or None,
            n_components=self.n_components,
            method=self.init_params,
            max_iter=self.max_iter,
            batch_size=group,
        )

    def _keep_best(self, restarts: batch.RestartsResult, dtype) -> None:
        """Set the fitted attributes from the restart the driver selected."""
        results, best = restarts.all, int(restarts.best_index)
        n_init = results.n_iter.shape[0]
        if not np.any(results.status != em.NONFINITE):
            raise ValueError(self._nonfinite_message)
        params = jax.tree.map(
            lambda a: np.asarray(a[best], dtype=dtype), results.params
        )
        self._set_fitted(params, dtype)
        n_iter = int(results.n_iter[best])
        self.n_iter_ = n_iter
        self.converged_ = bool(results.converged[best])
        self.lower_bound_ = (
            float(results.log_likelihood[best]) if self.max_iter > 0 else -np.inf
        )
        self.lower_bounds_ = [float(v) for v in results.trace[best, :n_iter]]
        if self.verbose:
            self._print_verbose(results, n_init)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different "
                "init parameters, or increase max_iter, tol, or check for "
                "degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _print_verbose(self, results, n_init) -> None:
        # The fit is one compiled loop with no host round-trips, so the
        # per-iteration report is printed from the recorded trace afterwards.
        for init in range(n_init):
            print(f"Initialization {init}")
            n_iter = int(results.n_iter[init])
            trace = results.trace[init, :n_iter]
            previous = -np.inf
            for iteration, value in enumerate(trace, start=1):
                if iteration % self.verbose_interval == 0:
                    if self.verbose > 1:
                        change = value - previous
                        print(f"  Iteration {iteration}\t ll change {change:.5f}")
                    else:
                        print(f"  Iteration {iteration}")
                previous = value
            state = "converged" if results.converged[init] else "did not converge"
            bound = results.log_likelihood[init]
            print(f"Initialization {state}. lower bound {bound:.5f}")

    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters by EM (``n_init`` restarts run at once).

        Args:
          X: data, shape (N, D). float32 stays float32, everything else is float64.
          y: ignored.
          sample_weight: optional non-negative weights, shape (N,).

        Returns:
          self.
        """
        del y
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the most probable component of every sample."""
        del y
        X = self._fit(X, sample_weight)
        return self.predict(X)

    def fit_many(self, datasets, sample_weight=None, *, batch_size=None):
        """Fit this model to each of many data sets at once (one compiled program).

        Every data set gets ``n_init`` restarts of this estimator's settings
        (``init_params``, ``max_iter``, ``tol``, ``*_init`` arrays), all fitted
        together by vmapped EM; data sets of different lengths are padded and
        masked by zero weights. ``warm_start`` and ``verbose`` are ignored.

        Args:
          datasets: a list of (N_b, D) arrays, or one (B, N, D) array.
          sample_weight: None, or one weight array (N_b,) per data set.
          batch_size: fit this many data sets at a time (bounded memory).

        Returns:
          A ``FittedMixtures``: stacked fitted parameters (``weights_``,
          ``means_`` …, leading axis B), ``converged_``, ``n_iter_``,
          ``lower_bound_``, ``status_``; ``result[b]`` is a fitted estimator.
        """
        from jaxmix.estimators import fit_many as _fit_many

        return _fit_many.fit_many(self, datasets, sample_weight, batch_size)

    # -- scoring -----------------------------------------------------------------
    def _check_predict_input(self, X) -> np.ndarray:
        self._check_is_fitted("converged_")
        X = check_array(
            X, n_features=self.n_features_in_, estimator=type(self).__name__
        )
        self._check_data(X)
        return X

    def _log_joint(self, X):
        X = self._check_predict_input(X)
        params = self._fitted_params()
        dtype = params.means.dtype
        with precision(dtype):
            log_prob, log_norm = _log_joint_and_norm(
                self._family(),
                jax.tree.map(jnp.asarray, params),
                jnp.asarray(X.astype(dtype, copy=False)),
            )
            return np.asarray(log_prob), np.asarray(log_norm)

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood log p(x_n) of every sample, shape (N,)."""
        return self._log_joint(X)[1]

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per sample."""
        del y
        return float(np.mean(self.score_samples(X)))

    def _log_resp(self, X) -> np.ndarray:
        log_prob, log_norm = self._log_joint(X)
        impossible = np.flatnonzero(np.isneginf(log_norm))
        if impossible.size:
            # p(k | x) is 0/0 there: say so rather than return NaN or a guess.
            raise ValueError(
                f"{impossible.size} sample(s) (rows {impossible[:10].tolist()}"
                f"{' ...' if impossible.size > 10 else ''}) have probability zero "
                "under every component, so their component is undefined; "
                "score_samples gives them -inf. A prior (e.g. mean_prior for "
                "Bernoulli means) keeps every sample possible."
            )
        return log_prob - log_norm[:, None]

    def predict(self, X) -> np.ndarray:
        """Most probable component of every sample, shape (N,)."""
        return np.argmax(self._log_resp(X), axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities p(k | x_n), shape (N, K)."""
        return np.exp(self._log_resp(X))

    def _n_parameters(self) -> int:
        return self._family().n_parameters(self.n_components, self.n_features_in_)

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        X = self._check_predict_input(X)
        n = X.shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        X = self._check_predict_input(X)
        return -2 * self.score(X) * X.shape[0] + 2 * self._n_parameters()
