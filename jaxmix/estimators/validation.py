"""Input validation and scikit-learn conventions shared by the estimators.

scikit-learn is optional. When scikit-learn 1.6 or newer is installed, the
estimators are scikit-learn estimators: they derive from its ``BaseEstimator``
and mixins (tags, ``clone``, HTML repr, ``set_output``), check their parameters
against the class-level ``_parameter_constraints`` table with its
``_validate_params``, check data with its ``validate_data`` (``n_features_in_``,
``feature_names_in_``) and raise its exception types. Without it, the small
stand-ins at the end of this module give the same interface: ``get_params`` /
``set_params`` / ``repr`` from the ``__init__`` signature, the same constraint
table checked by a short validator, and a NumPy check of the data. Importing
this module imports scikit-learn, so the top-level ``jaxmix`` package imports
the estimators only when they are first used.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from numbers import Integral, Real

import jax
import numpy as np

try:  # scikit-learn's exception types, so that its users' `except`s keep working.
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
except ImportError:  # pragma: no cover - exercised without scikit-learn

    class NotFittedError(ValueError, AttributeError):
        """Raised when a method needs a fitted estimator."""

    class ConvergenceWarning(UserWarning):
        """Raised when EM stops before converging."""


try:  # scikit-learn >= 1.6: `validate_data` and the tags API.
    from sklearn.base import (
        BaseEstimator,
        ClassNamePrefixFeaturesOutMixin,
        ClusterMixin,
        DensityMixin,
        TransformerMixin,
    )
    from sklearn.utils import check_array as _sklearn_check_array
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import validate_data as _sklearn_validate_data

    SKLEARN = True
except ImportError:  # pragma: no cover - exercised without scikit-learn
    SKLEARN = False

__all__ = [
    "SKLEARN",
    "BaseEstimator",
    "ClassNamePrefixFeaturesOutMixin",
    "ClusterMixin",
    "ConvergenceWarning",
    "DensityMixin",
    "Interval",
    "NotFittedError",
    "StrOptions",
    "TransformerMixin",
]

#: Input dtypes kept as they are; everything else becomes the first one.
FLOAT_DTYPES = (np.float64, np.float32)


# -- data ------------------------------------------------------------------------
def _reject_sparse(X, name: str) -> None:
    if type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(
            f"Sparse data was passed for {name}, but dense data is required. Use "
            "'.toarray()' to convert to a dense numpy array."
        )


def check_observed_rows(X: np.ndarray) -> None:
    """``ValueError`` naming the first row of X whose entries are all NaN."""
    empty = np.flatnonzero(np.all(np.isnan(X), axis=1))
    if empty.size:
        more = f" (and {empty.size - 1} more)" if empty.size > 1 else ""
        raise ValueError(
            f"Row {empty[0]} of X has no observed value (every entry is NaN)"
            f"{more}; drop it: a sample with nothing observed carries no "
            "information"
        )


def _numpy_check_array(
    X, name: str, ensure_min_samples: int, allow_nan: bool = False
) -> np.ndarray:
    """The data check without scikit-learn: a finite 2-D float32/float64 array."""
    _reject_sparse(X, name)
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} could not be converted to a numeric array: {error}"
        ) from None
    if array.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    if array.dtype not in FLOAT_DTYPES:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name} must be numeric; could not convert it to float: {error}"
            ) from None
    if array.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name}, got {array.ndim}D array instead "
            f"(shape {array.shape}). Reshape your data with X.reshape(-1, 1) if it "
            "has a single feature or X.reshape(1, -1) if it is a single sample."
        )
    if array.shape[0] < ensure_min_samples:
        raise ValueError(
            f"Found array with {array.shape[0]} sample(s) (shape={array.shape}) "
            f"while a minimum of {ensure_min_samples} is required."
        )
    if array.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={array.shape}) while a minimum "
            "of 1 is required."
        )
    if allow_nan and np.isinf(array).any():
        raise ValueError(f"Input {name} contains infinity.")
    if not allow_nan and not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"Input {name} contains {bad}.")
    return array


def _non_numeric(error: ValueError, name: str) -> ValueError:
    """scikit-learn's message for strings, reworded to say what is wrong."""
    if "could not convert" in str(error):
        return ValueError(f"{name} must be numeric; could not convert it: {error}")
    return error


def check_array(X, *, name: str = "X", ensure_min_samples: int = 1) -> np.ndarray:
    """A finite 2-D array; float32 and float64 keep their dtype, the rest is float64.

    Lists, pandas DataFrames, read-only and non-contiguous arrays are accepted;
    sparse matrices raise ``TypeError``.

    Raises:
      ValueError: non-numeric or complex data, not 2-D, no features, too few
        samples, NaN or infinite entries.
    """
    if isinstance(X, jax.Array):
        X = np.asarray(X)
    if not SKLEARN:
        return _numpy_check_array(X, name, ensure_min_samples)
    try:
        return _sklearn_check_array(
            X,
            dtype=FLOAT_DTYPES,
            ensure_min_samples=ensure_min_samples,
            input_name=name,
        )
    except ValueError as error:
        raise _non_numeric(error, name) from None


def validate_data(
    estimator, X, *, reset: bool, ensure_min_samples: int = 1, allow_nan=False
):
    """:func:`check_array`, and the estimator's ``n_features_in_`` set or checked.

    ``reset=True`` (fit) records ``n_features_in_`` (and, with scikit-learn,
    ``feature_names_in_`` for a DataFrame); ``reset=False`` checks X against them.
    ``allow_nan``: NaN entries are missing values (infinity stays an error),
    and a row with no observed value is a ``ValueError`` naming it.
    """
    if isinstance(X, jax.Array):
        X = np.asarray(X)
    if SKLEARN:
        try:
            X = _sklearn_validate_data(
                estimator,
                X,
                reset=reset,
                dtype=FLOAT_DTYPES,
                ensure_min_samples=ensure_min_samples,
                ensure_all_finite="allow-nan" if allow_nan else True,
            )
        except ValueError as error:
            raise _non_numeric(error, "X") from None
        if allow_nan:
            check_observed_rows(X)
        return X
    X = _numpy_check_array(X, "X", ensure_min_samples, allow_nan)
    if allow_nan:
        check_observed_rows(X)
    if reset:
        estimator.n_features_in_ = X.shape[1]
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input."
        )
    return X


def check_sample_weight(sample_weight, n_samples: int, dtype) -> np.ndarray | None:
    """None, or finite non-negative weights of shape (N,), not all zero (a copy)."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight)
    if weights.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric, got dtype {weights.dtype}")
    weights = weights.astype(dtype)  # a copy: the caller's array is never changed
    if weights.ndim == 0:
        weights = np.full(n_samples, weights, dtype=dtype)
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), got {weights.shape}"
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(weights < 0):
        raise ValueError("sample_weight must be non-negative")
    if not weights.sum() > 0:
        raise ValueError(
            "sample_weight must contain at least one positive weight; all weights "
            "are zero"
        )
    return weights


def check_weights_init(weights, n_components: int) -> np.ndarray:
    """Starting weights: K finite values in [0, 1] that sum to one (as float64)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_components,):
        raise ValueError(
            f"weights_init must have shape ({n_components},), got {weights.shape}"
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights_init contains NaN or infinity")
    if weights.min() < 0 or weights.max() > 1:
        raise ValueError(
            "weights_init must be in [0, 1], but got min value "
            f"{weights.min():.5f}, max value {weights.max():.5f}"
        )
    if not np.allclose(weights.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"weights_init must sum to 1, but sums to {weights.sum():.5f}")
    return weights


def check_is_fitted(estimator) -> None:
    """Raise ``NotFittedError`` unless ``estimator.__sklearn_is_fitted__()``."""
    if not estimator.__sklearn_is_fitted__():
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' "
            "with appropriate arguments before using this estimator."
        )


# -- parameters ------------------------------------------------------------------
def check_random_state(seed) -> np.random.RandomState:
    """scikit-learn's convention: None, an int, or a RandomState."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(
        f"random_state must be None, an int or a RandomState, got {seed!r}"
    )


def jax_key(random_state) -> jax.Array:
    """A JAX key drawn from a scikit-learn style random_state.

    ``jax.random.key(seed)``, whose threefry key data for a seed in
    [0, 2³¹) is ``[0, seed]``: built on the host, it compiles nothing
    (``jax.random.key`` compiles two small programs in every new process).
    """
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    if jax.config.jax_default_prng_impl != "threefry2x32":
        return jax.random.key(seed)
    return jax.random.wrap_key_data(np.array([0, seed], np.uint32))


def check_int(value, name: str, minimum: int) -> int:
    """An integer ≥ ``minimum`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(value, name: str, minimum: float = 0.0) -> float:
    """A finite real number ≥ ``minimum`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)


@contextlib.contextmanager
def precision(dtype):
    """Compute in the data's precision without touching the global x64 flag."""
    with jax.enable_x64(np.dtype(dtype) == np.float64):
        yield


# -- without scikit-learn: the same interface, in a few lines -------------------
if not SKLEARN:  # pragma: no cover - exercised by a subprocess in the tests

    class InvalidParameterError(ValueError, TypeError):
        """A parameter of the wrong type or out of range (as scikit-learn's)."""

    class Interval:
        """Numbers of ``type`` (``Integral`` or ``Real``) between two bounds."""

        def __init__(self, type, left, right, *, closed):  # noqa: A002
            self.type, self.left, self.right, self.closed = type, left, right, closed

        def is_satisfied_by(self, value) -> bool:
            if isinstance(value, bool) or not isinstance(value, self.type):
                return False
            if self.left is not None:
                low_ok = self.closed in ("left", "both")
                if value < self.left or (value == self.left and not low_ok):
                    return False
            if self.right is not None:
                high_ok = self.closed in ("right", "both")
                if value > self.right or (value == self.right and not high_ok):
                    return False
            return not (isinstance(value, Real) and np.isnan(value))

        def __str__(self) -> str:
            kind = "an int" if self.type is Integral else "a float"
            left = "[" if self.closed in ("left", "both") else "("
            right = "]" if self.closed in ("right", "both") else ")"
            low = "-inf" if self.left is None else self.left
            high = "inf" if self.right is None else self.right
            return f"{kind} in the range {left}{low}, {high}{right}"

    class StrOptions:
        """One of a set of strings."""

        def __init__(self, options):
            self.options = set(options)

        def is_satisfied_by(self, value) -> bool:
            return isinstance(value, str) and value in self.options

        def __str__(self) -> str:
            return f"a str among {sorted(self.options)}"

    def _satisfies(constraint, value) -> bool:
        if constraint is None:
            return value is None
        if constraint == "array-like":
            return hasattr(value, "__len__") or hasattr(value, "__array__")
        if constraint == "boolean":
            return isinstance(value, (bool, np.bool_))
        if constraint == "random_state":
            return value is None or isinstance(
                value, (numbers.Integral, np.random.RandomState)
            )
        if constraint == "verbose":
            return isinstance(value, (numbers.Integral, bool, np.bool_))
        return constraint.is_satisfied_by(value)

    def _validate_parameters(constraints: dict, params: dict, caller: str) -> None:
        for name, value in params.items():
            allowed = constraints.get(name, "no_validation")
            if allowed == "no_validation" or any(_satisfies(c, value) for c in allowed):
                continue
            described = " or ".join(
                {None: "None", "array-like": "an array-like"}.get(c, str(c))
                if c is None or isinstance(c, str)
                else str(c)
                for c in allowed
            )
            raise InvalidParameterError(
                f"The {name!r} parameter of {caller} must be {described}. "
                f"Got {value!r} instead."
            )

    class BaseEstimator:
        """``get_params``, ``set_params`` and ``repr`` from ``__init__``'s signature."""

        _parameter_constraints: dict = {}

        @classmethod
        def _get_param_names(cls) -> list[str]:
            signature = inspect.signature(cls.__init__)
            return sorted(
                p.name
                for p in signature.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            )

        def get_params(self, deep: bool = True) -> dict:
            """Parameters of this estimator, as passed to ``__init__``."""
            del deep
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            """Set parameters; unknown names raise ``ValueError``."""
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(
                        f"Invalid parameter {name!r} for estimator "
                        f"{type(self).__name__}. Valid parameters are: {valid}."
                    )
                setattr(self, name, value)
            return self

        def _validate_params(self) -> None:
            _validate_parameters(
                self._parameter_constraints,
                self.get_params(deep=False),
                type(self).__name__,
            )

        def __repr__(self) -> str:
            defaults = {
                p.name: p.default
                for p in inspect.signature(type(self).__init__).parameters.values()
            }
            changed = []
            for name, value in self.get_params().items():
                default = defaults.get(name, inspect.Parameter.empty)
                if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
                    changed.append(f"{name}=array(...)")
                elif value is not default and value != default:
                    changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"

    class DensityMixin:
        """Marks a density estimator (scikit-learn's mixin sets its tags)."""

    class ClusterMixin:
        """Marks a clusterer (scikit-learn's mixin sets its tags)."""

    class TransformerMixin:
        """Marks a transformer (scikit-learn's mixin adds ``set_output``)."""

    class ClassNamePrefixFeaturesOutMixin:
        """Output feature names ``<class name in lower case><i>``."""

        def get_feature_names_out(self, input_features=None) -> np.ndarray:
            """Names of the ``transform`` output columns."""
            del input_features
            check_is_fitted(self)
            prefix = type(self).__name__.lower()
            return np.asarray(
                [f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object
            )
