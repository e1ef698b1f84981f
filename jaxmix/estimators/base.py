"""What every scikit-learn-style estimator of jaxmix shares.

:class:`EstimatorBase` is the one base of KMeans, KMedians and the mixtures:
the shared parameters (``n_init``, ``max_iter``, ``tol``, ``random_state``)
and their constraints, declared once in a class-level table that subclasses
extend; the validation of parameters and data; the fitted family ``family_``;
and the padding of small data sets to a few sizes, so that a new number of
samples rarely compiles a new program. :class:`MixtureEstimator` adds soft EM:
subclasses say how to build their family, turn user ``*_init`` arrays into
params and export fitted params as attributes; it runs the restarts as one
vmapped compiled fit, keeps the best, and provides the scoring methods.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import batch, em, initialization, online
from jaxmix.estimators import streaming
from jaxmix.estimators.validation import (
    SKLEARN,
    BaseEstimator,
    ConvergenceWarning,
    DensityMixin,
    Interval,
    StrOptions,
    check_is_fitted,
    check_random_state,
    check_sample_weight,
    jax_key,
    precision,
    validate_data,
)

#: Data sets up to this many samples are padded (see :func:`padded_size`).
PAD_LIMIT = 1 << 16


def padded_size(n_samples: int) -> int:
    """The number of rows a data set of ``n_samples`` is padded to.

    At least 256, then two sizes per octave (384, 512, 768, ...) up to
    :data:`PAD_LIMIT`; larger data sets are not padded. The padding rows have
    weight zero, so the fit is the same (the random starts too: the
    initialisation draws per-row values whose first N rows do not depend on
    the padding, and never picks a row of zero weight); but each size is a
    compiled program of its own, and for small data sets compiling costs far
    more than fitting (seconds against milliseconds).
    """
    if n_samples > PAD_LIMIT:
        return n_samples
    size = 256
    while size < n_samples:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


#: Fits of at most :data:`PAD_LIMIT` samples whose work per component,
#: samples × features², is at most this have their components padded (see
#: :func:`component_bucket`).
COMPONENT_PAD_LIMIT = 1 << 20


def component_bucket(n_components: int, n_samples: int, n_features: int) -> int:
    """The number of components a fit of ``n_components`` is padded to.

    At least 8, then two sizes per octave (12, 16, 24, ...), for small
    problems: at most :data:`PAD_LIMIT` samples and samples × features² at most
    :data:`COMPONENT_PAD_LIMIT`; otherwise ``n_components``. The extra
    components are masked (weight exactly zero), which leaves the fit the
    same, so a grid search over ``n_components`` compiles one program per
    bucket instead of one per value; on small problems a few idle components
    cost far less than compiling (seconds).
    """
    work = n_samples * n_features**2
    if n_samples > PAD_LIMIT or work > COMPONENT_PAD_LIMIT:
        return n_components
    size = 8
    while size < n_components:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def cut_components(params, axes, n_components: int, axis: int = 0):
    """The first ``n_components`` along each component axis (at ``axis``)."""
    index = (slice(None),) * axis + (slice(n_components),)
    return jax.tree.map(lambda leaf, has: leaf[index] if has else leaf, params, axes)


def pad_samples(X: np.ndarray, sample_weight: np.ndarray | None = None):
    """X and its weights with zero-weight rows appended up to :func:`padded_size`.

    The padding rows repeat the first sample, so they lie in every family's
    support and every density of them is finite.

    Returns:
      ``(X, weights)``, shapes (M, D) and (M,) with M ≥ N.
    """
    n_samples = X.shape[0]
    weights = np.ones(n_samples, X.dtype) if sample_weight is None else sample_weight
    extra = padded_size(n_samples) - n_samples
    if extra:
        X = np.concatenate([X, np.repeat(X[:1], extra, axis=0)])
        weights = np.concatenate([weights, np.zeros(extra, weights.dtype)])
    return X, weights


def _fill_missing(X: np.ndarray) -> np.ndarray:
    """X with every NaN replaced by its feature's mean over the observed entries."""
    observed = ~np.isnan(X)
    counts = observed.sum(axis=0)
    means = np.where(observed, X, 0).sum(axis=0) / np.maximum(counts, 1)
    return np.where(observed, X, means.astype(X.dtype))


class EstimatorBase(BaseEstimator):
    """Base of every jaxmix estimator (not for direct use).

    Subclasses extend :attr:`_parameter_constraints` with their own parameters
    (scikit-learn's constraint language: ``Interval``, ``StrOptions``,
    ``"array-like"``, ``"boolean"``, ``"random_state"``, ``None``, or
    ``"no_validation"`` for a parameter checked against the data later), and
    set ``family_`` when fitted.
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "random_state": ["random_state"],
    }

    #: The family has missing-data EM, so the estimator takes ``allow_nan``:
    #: with it, NaN entries of X are missing values; without it (the default),
    #: NaN is an error.
    _missing_capable: ClassVar[bool] = False

    @property
    def _missing_values(self) -> bool:
        """Whether NaN entries of X are read as missing values."""
        return self._missing_capable and bool(getattr(self, "allow_nan", False))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._missing_values
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "family_")

    def _prepare_input(self, X: np.ndarray) -> np.ndarray:
        """What the model sees of checked data (identity; e.g. a binarization)."""
        return X

    def _validate_fit_input(self, X, sample_weight, ensure_min_samples: int = 1):
        """Checked parameters, data (``n_features_in_`` recorded) and weights."""
        self._validate_params()
        X = validate_data(
            self,
            X,
            reset=True,
            ensure_min_samples=ensure_min_samples,
            allow_nan=self._missing_values,
        )
        weights = check_sample_weight(sample_weight, X.shape[0], X.dtype)
        return self._prepare_input(X), weights

    def _validate_predict_input(self, X) -> np.ndarray:
        """Checked data for a fitted model, in the model's precision."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, allow_nan=self._missing_values)
        X = self._prepare_input(X)
        self._family_for(X).check_data(X)
        return X.astype(self._fitted_dtype(), copy=False)

    def _family_for(self, X: np.ndarray):
        """The fitted family, reading NaN as missing exactly when X has NaN.

        Complete data keeps the complete-data program (and its exact results).
        """
        if not self._missing_values:
            return self.family_
        return self.family_.with_missing_values(bool(np.isnan(X).any()))

    def _fitted_dtype(self) -> np.dtype:
        raise NotImplementedError


@jax.jit
def _log_joint_and_norm(family, params, X):
    log_prob = em.log_joint(family, params, X)
    return log_prob, jax.nn.logsumexp(log_prob, axis=1)


@functools.partial(
    jax.jit,
    static_argnames=("n_components", "n_init", "method", "max_iter", "batch_size"),
)
def _fit_restarts(
    family,
    X,
    sample_weight,
    key,
    start,
    tol,
    initial_log_likelihood,
    fixed=None,
    n_active=None,
    *,
    n_components,
    n_init,
    method,
    max_iter,
    batch_size,
) -> batch.RestartsResult:
    """``n_init`` restarts, fitted by vmapped EM; the best kept. One program.

    The restarts' keys are ``jax.random.split(key, n_init)``.

    ``method`` None: every restart starts from ``start``, complete params (the
    user's ``*_init`` arrays, or a warm start). Otherwise ``start`` is a dict
    of the fields the user gave, and each restart is initialised by
    ``method`` with those fields replaced. ``fixed`` (None or a full mask)
    holds entries at their start values. ``n_active`` (traced): only the
    first ``n_active`` of the ``n_components`` are initialised, the rest
    masked.
    """
    keys = jax.random.split(key, n_init)
    if method is not None:
        return batch.initialize_and_fit(
            family,
            X,
            keys,
            tol,
            sample_weight,
            start or None,
            n_components=n_components,
            method=method,
            max_iter=max_iter,
            batch_size=batch_size,
            fixed=fixed,
            n_active=n_active,
        )
    n_starts = keys.shape[0]
    starts = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_starts, *a.shape)), start)
    results = batch.fit_starts(
        family,
        X,
        starts,
        tol,
        sample_weight,
        initial_log_likelihood,
        max_iter=max_iter,
        batch_size=batch_size,
        fixed=fixed,
    )
    best, index = batch.select_best(results)
    return batch.RestartsResult(best, results, index)


def _cut_restarts(results: batch.RestartsResult, axes, n_components: int):
    """Host restarts' results with the masked components dropped."""
    best = results.best._replace(
        params=cut_components(results.best.params, axes, n_components)
    )
    every = results.all._replace(
        params=cut_components(results.all.params, axes, n_components, axis=1)
    )
    return results._replace(best=best, all=every)


class OnlineFit(NamedTuple):
    """What ``partial_fit`` keeps between calls (private; not saved by jaxmix.io).

    ``fitted`` holds the very arrays the last call set as fitted attributes:
    when they are no longer the estimator's (a later ``fit``, a loaded model,
    attributes set by hand), the state is stale and ``partial_fit`` starts a
    new online fit from the fitted parameters.
    """

    state: online.OnlineState  # host arrays
    fitted: tuple  # the fitted params' arrays this state produced


def online_state_current(estimator, params) -> OnlineFit | None:
    """The estimator's online state if it produced ``params`` (its fitted params)."""
    kept = vars(estimator).get("_online_fit")
    if kept is None:
        return None
    leaves = tuple(jax.tree.leaves(params))
    same = len(leaves) == len(kept.fitted) and all(
        a is b for a, b in zip(leaves, kept.fitted)
    )
    return kept if same else None


class MixtureEstimator(DensityMixin, EstimatorBase):
    """Base of the mixture estimators fitted by soft EM (not for direct use).

    Subclasses provide:

    - ``_make_family(X)``: the family to fit, its priors checked against the
      data X (and data-dependent defaults taken from it); with ``X=None``, the
      family of a model restored from its arrays (scoring needs no priors);
    - ``_user_params(X, family)``: the checked ``*_init`` arrays, a dict
      ``{params field: array}``;
    - ``_set_fitted(params, dtype)`` and ``_fitted_params()``: fitted params to
      and from the ``*_`` attributes.
    """

    _parameter_constraints: ClassVar[dict] = {
        **EstimatorBase._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(initialization.INIT_METHODS))],
        "weights_init": ["array-like", None],
    }
    _nonfinite_message = (
        "Fitting the mixture model failed because some components have "
        "ill-defined empirical covariance (for instance caused by singleton "
        "or collapsed samples). Try to decrease the number of components, "
        "increase reg_covar, or scale the input data."
    )
    # Not parameters of every mixture: estimators without them are never warm
    # started and print nothing.
    warm_start = False
    verbose = 0
    verbose_interval = 10
    # Not a parameter of every mixture: estimators without it never stream.
    device_budget = None
    # Not a parameter of every mixture: estimators without it fix nothing.
    fixed_params = None
    #: Names ``fixed_params`` accepts, each a params field, and the ``*_init``
    #: parameter that gives its values.
    _fixable: ClassVar[dict[str, tuple[str, str]]] = {}
    # partial_fit's step sizes γ_t = (t + t0)^(-alpha) (jaxmix.engine.online).
    _online_t0 = 0.0
    _online_alpha = 0.7

    # -- what subclasses provide -------------------------------------------------
    def _make_family(self, X: np.ndarray | None):
        raise NotImplementedError

    def _user_params(self, X: np.ndarray, family) -> dict:
        del X, family
        return {}

    def _set_fitted(self, params, dtype) -> None:
        raise NotImplementedError

    def _fitted_params(self):
        raise NotImplementedError

    def _component_axes(self):
        """Params with, per field, whether its first axis is the components.

        None (the default): fits and scores keep exactly ``n_components``.
        Given, small fits pad the components to :func:`component_bucket` where
        the family :attr:`~jaxmix.families.base.Family.masks_components`, and
        scoring always (a masked component's log joint density is −inf).
        """
        return None

    def _fitted_dtype(self) -> np.dtype:
        return self.weights_.dtype

    # -- fitting -----------------------------------------------------------------
    def _check_n_samples(self, n_samples: int) -> None:
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {n_samples}"
            )

    def _prepare_fit(self, X, sample_weight):
        """Checked data, weights, family and user starts, in that order."""
        X, weights = self._validate_fit_input(X, sample_weight, ensure_min_samples=2)
        self._check_n_samples(X.shape[0])
        missing = self._missing_values and bool(np.isnan(X).any())
        # Data-dependent prior defaults (e.g. the data mean) come from the
        # data with each missing entry replaced by its feature's observed mean.
        family = self._make_family(_fill_missing(X) if missing else X)
        family = family.with_missing_values(missing)
        family.check_data(X)
        return X, weights, family, self._user_params(X, family)

    def _fixed_fields(self) -> dict:
        """``fixed_params`` as ``{params field: True or mask}`` (checked names)."""
        fixed = self.fixed_params
        if fixed is None:
            return {}
        if isinstance(fixed, str):
            fixed = {fixed: True}
        elif isinstance(fixed, Mapping):
            fixed = dict(fixed)
        elif isinstance(fixed, (list, tuple, set, frozenset)):
            fixed = dict.fromkeys(fixed, True)
        else:
            raise ValueError(
                "fixed_params must be None, a parameter name, a list of names or "
                f"a dict {{name: mask}}; got {type(fixed).__name__}"
            )
        out = {}
        for name, mask in fixed.items():
            if name not in self._fixable:
                raise ValueError(
                    f"fixed_params names unknown parameter {name!r}; "
                    f"{type(self).__name__} can fix {sorted(self._fixable)}"
                )
            out[self._fixable[name][0]] = mask
        return out

    def _fixed_mask(self, family, X, weights, user):
        """The full mask of ``fixed_params`` (None), checked against ``*_init``."""
        fixed = self._fixed_fields()
        if not fixed:
            return None
        for name, (field, init) in self._fixable.items():
            mask = fixed.get(field)
            if mask is not None and np.any(mask) and field not in user:
                raise ValueError(
                    f"fixed_params fixes {name!r} but {init} is None: the fixed "
                    f"values come from {init}"
                )
        if streaming.streams(X, self.device_budget):
            raise ValueError(
                "fixed_params is not supported for streamed fits (data larger "
                "than device_budget)"
            )
        data, data_weights = pad_samples(X, weights)
        _, mask = batch.starts_and_mask(
            family,
            data,
            jax.random.key(0),
            data_weights,
            user,
            fixed,
            self.n_components,
            self.init_params,
        )
        return mask

    def _fit(self, X, sample_weight=None) -> np.ndarray:
        X, weights, family, user = self._prepare_fit(X, sample_weight)
        fixed = self._fixed_mask(family, X, weights, user)
        fields = set(family.params_type._fields)
        warm = self.warm_start and self.__sklearn_is_fitted__()
        n_init, method, initial_ll = self.n_init, self.init_params, -np.inf
        if warm:
            start, n_init, method = self._fitted_params(), 1, None
            initial_ll = self.lower_bound_
            if fixed is not None:
                # The fixed values are the *_init arrays, not the last fit's.
                start = start._replace(**user)
        elif set(user) == fields:  # everything is given: nothing to initialise
            start, method = family.params_type(**user), None
        else:
            start = user
        key = jax_key(self.random_state)
        if streaming.streams(X, self.device_budget) and family.missing_values:
            raise ValueError(
                "X contains missing values (NaN), which a streamed fit "
                "(device_budget) does not handle; fit without device_budget"
            )
        if streaming.streams(X, self.device_budget):
            with precision(X.dtype):
                results = streaming.streamed_restarts(
                    family,
                    X,
                    weights,
                    start,
                    method=method,
                    keys=jax.random.split(key, n_init),
                    n_components=self.n_components,
                    tol=self.tol,
                    max_iter=self.max_iter,
                    rng=check_random_state(self.random_state),
                )
                results = jax.device_get(results)
            self._keep_best(results, X.dtype)
            self.family_ = family
            return X
        data, data_weights = pad_samples(X, weights)
        n_samples, n_features = data.shape
        n_components, axes, start, n_active = self._masked_components(
            family, data, start, method, fixed
        )
        group = min(
            n_init, batch.default_batch_size(n_samples, n_components, n_features)
        )
        with precision(X.dtype):
            results = _fit_restarts(
                family,
                data,  # host arrays: jit transfers them, jnp.asarray would compile
                data_weights,
                key,
                jax.tree.map(lambda a: np.asarray(a, X.dtype), start),
                self.tol,
                initial_ll,
                fixed,
                None if n_active is None else np.int32(n_active),
                n_components=n_components,
                n_init=n_init,
                method=method,
                max_iter=self.max_iter,
                batch_size=group,
            )
            results = jax.device_get(results)
        if axes is not None:
            results = _cut_restarts(results, axes, self.n_components)
        self._keep_best(results, X.dtype)
        self.family_ = family
        return X

    def _masked_components(self, family, data, start, method, fixed):
        """How a fit pads its components to :func:`component_bucket`, if it does.

        Returns ``(n_components, axes, start, n_active)``: the number of
        components fitted, and ``axes`` None (no padding) or the params'
        component axes; given complete starts are padded here, and an
        initialisation by a method gets ``n_active`` (the true K) instead.
        Only where the fit stays the same: a family that
        :attr:`~jaxmix.families.base.Family.masks_components`, no fixed
        entries, and starts given in full or drawn by a method other than
        ``"random"`` with no ``*_init`` fields.
        """
        n_samples, n_features = data.shape
        size = component_bucket(self.n_components, n_samples, n_features)
        axes = self._component_axes()
        unchanged = (self.n_components, None, start, None)
        if size == self.n_components or fixed is not None or axes is None:
            return unchanged
        if not family.masks_components:
            return unchanged
        if method is None:
            return size, axes, batch.pad_components(start, axes, size), None
        if method in initialization.MASKABLE_METHODS and not start:
            return size, axes, start, self.n_components
        return unchanged

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
                stacklevel=4,
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

    def _online_start(self, X, weights, family, user):
        """Starting params of an online fit: ``init_params`` on the first batch.

        The user's ``*_init`` arrays replace the initialised fields; when they
        give every field, nothing is initialised.
        """
        dtype = X.dtype
        user = {name: jnp.asarray(value, dtype) for name, value in user.items()}
        if set(user) == set(family.params_type._fields):
            return family.params_type(**user)
        data, data_weights = pad_samples(X, weights)
        params = initialization.initialize(
            family,
            jax_key(self.random_state),
            jnp.asarray(data),
            self.n_components,
            self.init_params,
            jnp.asarray(data_weights),
        )
        return params._replace(**user)

    def _partial_fit(self, X, sample_weight) -> None:
        r"""One step of online (stepwise) EM with the batch X.

        The first call (on an unfitted model) checks the parameters, fixes
        ``n_features_in_`` and the precision (float32 stays float32), builds
        the family (priors with their data-dependent defaults taken from this
        batch) and initialises the params by ``init_params`` (or the
        ``*_init`` arrays) on this batch; every call then takes one step of
        :func:`jaxmix.engine.online.online_step` with γ_t = (t + t₀)^{−α},
        t₀ = 0, α = 0.7. The statistics are per sample, and the M-step scales
        them to all the sample weight seen so far, against which a prior
        weighs.

        On a model fitted by ``fit`` (or loaded), the online fit starts from
        the fitted params with new running statistics (and the family built
        from that batch, as on a first call): its first step is one EM
        iteration on that batch, which then replaces what the fit had seen.
        """
        if self._fixed_fields():
            raise ValueError(
                "fixed_params is not supported by partial_fit (online EM); use fit"
            )
        kept = None
        if self.__sklearn_is_fitted__():
            self._validate_params()
            dtype = self._fitted_dtype()
            X = validate_data(self, X, reset=False, allow_nan=self._missing_values)
            X = self._prepare_input(X).astype(dtype, copy=False)
            weights = check_sample_weight(sample_weight, X.shape[0], dtype)
            kept = online_state_current(self, self._fitted_params())
            missing = self._missing_values and bool(np.isnan(X).any())
            if kept is not None:
                family = self.family_
            else:
                family = self._make_family(_fill_missing(X) if missing else X)
            family = family.with_missing_values(missing)
            family.check_data(X)
            start = None if kept is not None else self._fitted_params()
        else:
            X, weights, family, user = self._prepare_fit(X, sample_weight)
            dtype = X.dtype
            with precision(dtype):
                start = self._online_start(X, weights, family, user)
        data, data_weights = pad_samples(X, weights)
        with precision(dtype):
            if kept is None:
                start = jax.tree.map(lambda a: jnp.asarray(a, dtype), start)
                state = online.init_online(family, start, X.shape[1])
            else:
                state = jax.tree.map(jnp.asarray, kept.state)
            state = online.online_step(
                family,
                state,
                jnp.asarray(data),
                jnp.asarray(data_weights),
                t0=self._online_t0,
                alpha=self._online_alpha,
            )
            state = jax.device_get(state)
        if not state.finite:
            raise ValueError(self._nonfinite_message)
        self._set_fitted(
            jax.tree.map(lambda a: np.asarray(a, dtype=dtype), state.params), dtype
        )
        lower_bound = float(state.log_likelihood)
        self.n_iter_ = int(state.n_steps)
        self.converged_ = False  # online EM has no convergence test
        self.lower_bound_ = lower_bound
        if kept is not None:
            self.lower_bounds_.append(lower_bound)
        else:
            self.lower_bounds_ = [lower_bound]
        self.family_ = family
        self._online_fit = OnlineFit(
            state, tuple(jax.tree.leaves(self._fitted_params()))
        )

    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters by EM (``n_init`` restarts run at once).

        Args:
          X: data, shape (N, D): an array, a list or a DataFrame. float32 stays
            float32, everything else is float64.
          y: ignored.
          sample_weight: optional non-negative weights, shape (N,).

        Returns:
          self.
        """
        del y
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the most probable component of every sample."""
        del y
        X = self._fit(X, sample_weight)
        return np.argmax(self._log_resp(X), axis=1)

    def fit_many(self, datasets, sample_weight=None, *, batch_size=None):
        """Fit this model to each of many data sets at once (one compiled program).

        Every data set gets ``n_init`` restarts of this estimator's settings
        (``init_params``, ``max_iter``, ``tol``, ``*_init`` arrays, priors), all
        fitted together by vmapped EM; data sets of different lengths are
        padded and masked by zero weights. ``warm_start`` and ``verbose`` are
        ignored, and data-dependent prior defaults (e.g. the prior mean of the
        Gaussian means) come from all data sets pooled.

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
    def _log_joint(self, X: np.ndarray):
        """log π_k p(x_n | θ_k), (N, K), and log p(x_n), (N,), of checked data."""
        n_samples = X.shape[0]
        data, _ = pad_samples(X)
        family, params = self._family_for(X), self._fitted_params()
        n_components = len(params.weights)
        size = component_bucket(n_components, *data.shape)
        axes = self._component_axes()
        if size > n_components and axes is not None:  # −inf for any family
            params = batch.pad_components(params, axes, size)
        with precision(X.dtype):
            log_prob, log_norm = _log_joint_and_norm(
                family, jax.tree.map(np.asarray, params), data
            )
            return (
                np.asarray(log_prob)[:n_samples, :n_components],
                np.asarray(log_norm)[:n_samples],
            )

    def _log_resp(self, X: np.ndarray) -> np.ndarray:
        """log p(k | x_n), (N, K), of checked data."""
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

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood log p(x_n) of every sample, shape (N,)."""
        return self._log_joint(self._validate_predict_input(X))[1]

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per sample (higher is better)."""
        del y
        return float(np.mean(self.score_samples(X)))

    def predict(self, X) -> np.ndarray:
        """Most probable component of every sample, shape (N,)."""
        return np.argmax(self._log_resp(self._validate_predict_input(X)), axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities p(k | x_n), shape (N, K)."""
        return np.exp(self._log_resp(self._validate_predict_input(X)))

    # -- sampling ----------------------------------------------------------------
    def _draw(self, rng: np.random.RandomState, labels: np.ndarray) -> np.ndarray:
        """Samples of the given components (sorted labels), (len(labels), D)."""
        raise NotImplementedError

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture.

        The components' counts are multinomial with the fitted weights; the
        random stream is ``random_state``'s.

        Returns:
          ``(X, y)``: samples (n_samples, D) in the model's dtype, grouped by
          component, and their component labels.
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral):
            raise ValueError(f"n_samples must be an integer, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples}. The sampling requires "
                "at least one sample."
            )
        rng = check_random_state(self.random_state)
        weights = np.asarray(self.weights_, np.float64)
        counts = rng.multinomial(n_samples, weights / weights.sum())
        labels = np.repeat(np.arange(weights.shape[0]), counts)
        X = np.asarray(self._draw(rng, labels))
        return X.astype(self._fitted_dtype(), copy=False), labels

    def _n_parameters(self) -> int:
        return self.family_.n_parameters(self.n_components, self.n_features_in_)

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        log_likelihood = self.score_samples(X)
        n_samples = log_likelihood.shape[0]
        return -2 * np.mean(log_likelihood) * n_samples + self._n_parameters() * np.log(
            n_samples
        )

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        log_likelihood = self.score_samples(X)
        n_samples = log_likelihood.shape[0]
        return -2 * np.mean(log_likelihood) * n_samples + 2 * self._n_parameters()


def bic_scorer(estimator, X, y=None) -> float:
    """Minus the BIC of a fitted mixture on X: a scorer for model selection.

    Higher is better, as scikit-learn's scorers are, so
    ``GridSearchCV(model, grid, scoring=bic_scorer)`` keeps the candidate of
    lowest BIC on the held-out folds. ``estimator`` is a fitted mixture or a
    fitted ``Pipeline`` ending in one (X then goes through the other steps).

    Args:
      estimator: a fitted estimator with a ``bic`` method, or a Pipeline.
      X: data, shape (N, D).
      y: ignored.

    Returns:
      ``-estimator.bic(X)``.

    Examples:
      >>> import numpy as np, jaxmix
      >>> from jaxmix.estimators import bic_scorer
      >>> X = np.random.default_rng(0).normal(size=(200, 2))
      >>> model = jaxmix.GaussianMixture(1).fit(X)
      >>> bool(np.isclose(bic_scorer(model, X), -model.bic(X)))
      True
    """
    del y
    if SKLEARN:
        from sklearn.pipeline import Pipeline

        if isinstance(estimator, Pipeline):  # X goes through every step but the last
            X = estimator[:-1].transform(X)
            estimator = estimator[-1]
    return -float(estimator.bic(X))
