"""The estimators' ``fit_many``: one fitted mixture per data set, for NumPy users."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import batch, em
from jaxmix.estimators.validation import (
    ConvergenceWarning,
    check_array,
    check_sample_weight,
    jax_key,
    precision,
)


class FittedMixtures:
    """One fitted mixture per data set, as returned by ``fit_many``.

    Fitted parameters are stacked along a leading data-set axis B and named as
    the estimator's attributes (``weights_`` (B, K), ``means_`` (B, K, D),
    ``covariances_`` …), with ``converged_``, ``n_iter_``, ``lower_bound_`` and
    ``status_`` (``"converged"``, ``"max_iter"`` or ``"nonfinite"``) of shape
    (B,). ``result[b]`` is a fitted estimator for data set ``b`` (with
    ``predict``, ``score``, ``bic`` …); iterating yields them all.
    """

    def __init__(self, estimator, family, params, result, dtype, n_features):
        self._estimator = estimator
        self._family = family
        self._params = params
        self._dtype = dtype
        self._n_features = n_features
        for field, value in params._asdict().items():
            setattr(self, f"{field}_", value)
        self.converged_ = np.asarray(result.converged, dtype=bool)
        self.n_iter_ = np.asarray(result.n_iter, dtype=int)
        self.lower_bound_ = np.asarray(result.log_likelihood, dtype=np.float64)
        self.status_ = np.array([em.STATUS_NAMES[int(s)] for s in result.status])

    def __len__(self) -> int:
        return self.converged_.shape[0]

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"data set {index} out of range for {len(self)} fits")
        estimator = type(self._estimator)(**self._estimator.get_params())
        params = jax.tree.map(lambda leaf: np.asarray(leaf[index]), self._params)
        estimator._set_fitted(params, self._dtype)
        estimator.family_ = self._family  # the fitted family, priors included
        estimator.n_features_in_ = self._n_features
        estimator.converged_ = bool(self.converged_[index])
        estimator.n_iter_ = int(self.n_iter_[index])
        estimator.lower_bound_ = float(self.lower_bound_[index])
        estimator.lower_bounds_ = []  # the batched fit keeps no per-iteration trace
        return estimator

    def __iter__(self):
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        return f"FittedMixtures({len(self)} × {self._estimator!r})"


def _check_weight_count(sample_weight, n_sets: int) -> None:
    if len(sample_weight) != n_sets:
        raise ValueError(
            f"got {len(sample_weight)} sample weight arrays for {n_sets} data sets"
        )


def _validate_stacked(estimator, Xs, sample_weight):
    """:func:`_validate` for one (B, N, D) array."""
    Xs = np.asarray(Xs)
    n_sets, n_samples, n_features = Xs.shape
    if n_sets == 0:
        raise ValueError("datasets holds no data sets")
    flat = check_array(Xs.reshape(n_sets * n_samples, n_features), name="datasets")
    flat = estimator._prepare_input(flat)
    Xs = flat.reshape(Xs.shape)
    weights = None
    if sample_weight is not None:
        _check_weight_count(sample_weight, n_sets)
        weights = np.stack(
            [check_sample_weight(w, n_samples, Xs.dtype) for w in sample_weight]
        )
    return Xs, weights, flat, Xs[0]


def _validate_list(estimator, datasets, sample_weight):
    """:func:`_validate` for a list of (N_b, D) arrays: padded if ragged."""
    arrays = [
        estimator._prepare_input(
            check_array(X, name=f"datasets[{i}]", ensure_min_samples=2)
        )
        for i, X in enumerate(datasets)
    ]
    weights = None
    if sample_weight is not None:
        _check_weight_count(sample_weight, len(arrays))
        weights = [
            np.ones(X.shape[0], X.dtype)
            if w is None
            else check_sample_weight(w, X.shape[0], X.dtype)
            for X, w in zip(arrays, sample_weight, strict=True)
        ]
    n_features = {X.shape[1] for X in arrays}
    if len(n_features) != 1:
        raise ValueError(
            f"all data sets must have the same number of features, got {n_features}"
        )
    smallest = min(arrays, key=len)
    ragged = len({X.shape[0] for X in arrays}) > 1
    if ragged or weights is not None:
        Xs, padded_weights = batch.pad_datasets(arrays, weights)
    else:
        Xs, padded_weights = np.stack(arrays), None
    return Xs, padded_weights, np.concatenate(arrays), smallest


def _validate(estimator, datasets, sample_weight):
    """Checked data sets: ``(Xs (B, N, D), weights (B, N) or None, pooled, smallest)``.

    ``pooled`` (Σ N_b, D) holds every sample of every data set, without padding.
    """
    if isinstance(datasets, np.ndarray | jax.Array) and np.ndim(datasets) == 3:
        return _validate_stacked(estimator, datasets, sample_weight)
    if isinstance(datasets, np.ndarray | jax.Array) or not len(datasets):
        raise ValueError(
            "datasets must be a non-empty list of (N, D) arrays or a (B, N, D) array"
        )
    return _validate_list(estimator, datasets, sample_weight)


def fit_many(estimator, datasets, sample_weight=None, batch_size=None):
    """Fit ``estimator``'s model to each data set at once; see ``FittedMixtures``."""
    estimator._validate_params()
    if estimator._fixed_fields():
        raise ValueError("fixed_params is not supported by fit_many; use fit")
    Xs, weights, pooled, smallest = _validate(estimator, datasets, sample_weight)
    dtype = Xs.dtype
    estimator._check_n_samples(smallest.shape[0])
    family = estimator._make_family(pooled)
    family.check_data(pooled)
    user = estimator._user_params(smallest, family)
    if weights is not None:
        positive = np.sum(weights > 0, axis=1)
        if np.any(positive < estimator.n_components):
            raise ValueError(
                "Expected every data set to have at least n_components samples of "
                f"positive weight, but one has {int(positive.min())} < "
                f"n_components = {estimator.n_components}"
            )
    n_sets = Xs.shape[0]
    with precision(dtype):
        overrides = {
            field: jnp.asarray(value, dtype) for field, value in user.items()
        } or None
        keys = jax.random.split(jax_key(estimator.random_state), n_sets)
        result = batch.fit_many_keyed(
            family,
            Xs,
            keys,
            n_components=estimator.n_components,
            sample_weight=weights,
            n_init=estimator.n_init,
            batch_size=batch_size,
            method=estimator.init_params,
            max_iter=estimator.max_iter,
            tol=estimator.tol,
            overrides=overrides,
        )
        result = jax.device_get(result)
    params = jax.tree.map(lambda leaf: np.asarray(leaf, dtype=dtype), result.params)
    fitted = FittedMixtures(estimator, family, params, result, dtype, Xs.shape[-1])
    nonfinite = int(np.sum(result.status == em.NONFINITE))
    if nonfinite:
        warnings.warn(
            f"{nonfinite} of {n_sets} fits met a non-finite value (ill-defined "
            "covariance or degenerate data); see status_. Try increasing reg_covar "
            "or decreasing n_components.",
            ConvergenceWarning,
            stacklevel=3,
        )
    unconverged = int(np.sum(result.status == em.MAX_ITER))
    if unconverged and estimator.max_iter > 0:
        warnings.warn(
            f"{unconverged} of {n_sets} fits did not converge. Try different init "
            "parameters, or increase max_iter, tol, or check for degenerate data.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return fitted
