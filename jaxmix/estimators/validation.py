"""Input validation and scikit-learn conventions shared by the estimators."""

from __future__ import annotations

import contextlib
import inspect
import numbers

import jax
import numpy as np

try:  # Use scikit-learn's exception types when it is installed, so that
    # `except sklearn.exceptions.NotFittedError` keeps working for its users.
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
except ImportError:  # pragma: no cover - exercised without scikit-learn

    class NotFittedError(ValueError, AttributeError):
        """Raised when a method needs a fitted estimator."""

    class ConvergenceWarning(UserWarning):
        """Raised when EM stops before converging."""


__all__ = ["ConvergenceWarning", "NotFittedError"]


def check_array(
    X,
    *,
    name: str = "X",
    ensure_min_samples: int = 1,
    n_features: int | None = None,
    estimator: str = "",
) -> np.ndarray:
    """A finite 2-D float array; float32 and float64 keep their dtype.

    Raises:
      ValueError: non-numeric, complex, not 2-D, empty, NaN or infinite entries,
        too few samples, or the wrong number of features.
    """
    if hasattr(X, "__jax_array__") or isinstance(X, jax.Array):
        X = np.asarray(X)
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} could not be converted to a numeric array: {error}"
        ) from None
    if array.dtype.kind in "OUSV":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name} must be numeric; could not convert it to float: {error}"
            ) from None
    if array.dtype.kind == "c":
        raise ValueError(f"{name} must be real; complex data is not supported")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name}, got {array.ndim}D array instead "
            f"(shape {array.shape}). Reshape your data with X.reshape(-1, 1) if it "
            "has a single feature or X.reshape(1, -1) if it is a single sample."
        )
    if array.shape[1] == 0:
        raise ValueError(f"{name} has 0 features; at least 1 is required")
    if array.shape[0] < ensure_min_samples:
        raise ValueError(
            f"{name} has {array.shape[0]} sample(s), but at least "
            f"{ensure_min_samples} are required"
        )
    if not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"Input {name} contains {bad}; all values must be finite")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(
            f"{name} has {array.shape[1]} features, but {estimator} is expecting "
            f"{n_features} features as input"
        )
    return np.ascontiguousarray(array)


def check_sample_weight(sample_weight, n_samples: int, dtype) -> np.ndarray | None:
    """None, or finite non-negative weights of shape (N,) with a positive sum."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight)
    if weights.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric, got dtype {weights.dtype}")
    weights = weights.astype(dtype)
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
        raise ValueError("sample_weight must have a positive sum")
    return weights


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
    """A JAX key drawn from a scikit-learn style random_state."""
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return jax.random.key(seed)


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)


def check_option(value, name: str, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


@contextlib.contextmanager
def precision(dtype):
    """Compute in the data's precision without touching the global x64 flag."""
    with jax.enable_x64(np.dtype(dtype) == np.float64):
        yield


class ParamsMixin:
    """get_params / set_params / repr from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict:
        """Parameters of this estimator, as passed to ``__init__``."""
        del deep
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; unknown names raise ``ValueError``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {sorted(valid)}."
                )
            setattr(self, name, value)
        return self

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

    def _check_is_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                "with appropriate arguments before using this estimator."
            )
