"""Saving and loading fitted estimators as ``.npz`` files, without pickle.

A model file is NumPy's ``.npz`` (a zip of ``.npy`` arrays), written and read
with ``allow_pickle=False``:

- ``__header__``: a 0-d unicode array holding the JSON object
  ``{"format": "jaxmix-model", "version": 2, "class": ..., "params": {...}}``:
  the estimator's class name and every constructor parameter;
- one array per fitted attribute, named as the attribute (``weights_``,
  ``means_``, ...; scalars as 0-d arrays, lists as 1-d arrays);
- ``params.<i>``: the arrays among the constructor parameters.

In the header, JSON null, booleans, integers, (finite) floats, strings and
lists stand for themselves; every other value is an object tagged by
``"type"``: ``{"type": "tuple", "items": [...]}``, ``{"type": "array",
"entry": "params.0"}`` (a NumPy array), ``{"type": "scalar", "entry": ...}``
(a NumPy scalar, stored as a 0-d array) and ``{"type": "RandomState", "keys":
<array>, "pos": ..., "has_gauss": ..., "cached_gaussian": ...}`` (the Mersenne
Twister state).

A model file is data: loading one calls nothing but the loader and the
estimator's own ``__init__`` and checks. The class must be one of
:data:`ESTIMATORS`; its parameters pass the estimator's own validation; and
every array must be a fitted attribute declared for that class, of the
declared dtype kind and of the shape its rule derives from the parameters
and ``n_features_in_`` (e.g. ``means_`` (K, D)); NaN and infinity are refused
where a fit never produces them, and a missing attribute is an error. The
fitted family (``family_``) is not stored: it is rebuilt by the estimator.

Version 1 files (``"format": "jaxmix-model-1"``) held only the parameters that
were plain values, and load the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

FORMAT = "jaxmix-model"
#: The format version written by :func:`save_model`; files up to it load.
VERSION = 2
_FORMAT_1 = "jaxmix-model-1"
#: Larger headers are refused without being read (parameter arrays are entries
#: of their own, so a real header is a few kilobytes).
MAX_HEADER_BYTES = 1 << 20
_HEADER = "__header__"
_PARAM_ENTRY = "params."
_HEADER_KEYS = frozenset({"format", "version", "class", "params"})
# Fitted attributes that are not data: rebuilt by the estimator on load.
_REBUILT = frozenset({"family_"})
# Nesting of parameter values (tuples of arrays, lists of lists) beyond any
# estimator's needs.
_MAX_DEPTH = 16
# Dtype kinds allowed in parameter arrays: bool, integers, floats, strings.
_PARAM_KINDS = "biufU"


# -- what a file may hold, per class ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Attribute:
    """The rule for one fitted attribute of a model file.

    Attributes:
      kind: ``"model"`` (an array in the model's float dtype, float32 or
        float64, shared by all such arrays of one model), ``"float"``,
        ``"int"``, ``"bool"`` or ``"str"``.
      shape: the expected shape; each entry a size or a dimension name (``K``
        components, ``D`` features, ``L`` levels, ``I`` iterations, ``N`` any
        length), or a function of the dimension sizes and the constructor
        parameters returning the sizes. ``()`` is a scalar, loaded as a
        Python ``float``, ``int`` or ``bool``.
      depends_on: the dimensions and parameters a shape function uses (named
        in error messages).
      required: whether a fitted model always has it.
      as_list: loaded as a Python list (``lower_bounds_``).
      may_be_empty: a 1-d attribute may also have length 0.
      allow_neg_inf: ``-inf`` is a value a fit can produce (NaN and ``+inf``
        never are).
      minimum: smallest allowed value.
      below: the dimension name whose size bounds the values from above
        (exclusive), e.g. ``labels_`` below ``K``.
      dimension: this scalar attribute gives the size of that dimension.
    """

    kind: str
    shape: tuple | Callable = ()
    depends_on: tuple[str, ...] = ()
    required: bool = True
    as_list: bool = False
    may_be_empty: bool = False
    allow_neg_inf: bool = False
    minimum: float | None = None
    below: str | None = None
    dimension: str | None = None


@dataclasses.dataclass(frozen=True)
class Loadable:
    """A registered estimator class: where it lives and what its files hold.

    Attributes:
      module: the module defining the class (imported on first use).
      components: the constructor parameter giving the dimension ``K``.
      attributes: the fitted attributes a file may set, by name.
      family: the fitted family of a restored estimator, asked of the
        estimator's own method.
    """

    module: str
    components: str
    attributes: types.MappingProxyType
    family: Callable


def _covariance_shape(dims: dict, params: dict) -> tuple[int, ...]:
    """scikit-learn's shape of covariances for the model's covariance type."""
    from jaxmix.families import covariance_kernels

    kernel = covariance_kernels.KERNELS[params["covariance_type"]]
    return kernel.shape(dims["K"], dims["D"])


def _loadings_shape(dims: dict, params: dict) -> tuple[int, ...]:
    return (dims["K"], dims["D"], params["n_factors"])


def _noise_shape(dims: dict, params: dict) -> tuple[int, ...]:
    from jaxmix.families.factor import NOISE_KERNELS

    return NOISE_KERNELS[params["noise_type"]].shape(dims["K"], dims["D"])


def _mixture_family(estimator):
    return estimator._make_family(None)


def _clustering_family(estimator):
    return estimator._make_family()


_COMMON = {
    "n_features_in_": Attribute("int", minimum=1, dimension="D"),
    "feature_names_in_": Attribute("str", ("D",), required=False),
    "n_iter_": Attribute("int", minimum=0, dimension="I"),
}
_SOFT_EM = {
    **_COMMON,
    "converged_": Attribute("bool"),
    "lower_bound_": Attribute("float", allow_neg_inf=True),
    "lower_bounds_": Attribute(
        "float", ("I",), as_list=True, may_be_empty=True, allow_neg_inf=True
    ),
    "weights_": Attribute("model", ("K",), minimum=0.0),
}
_CLUSTERING = {
    **_COMMON,
    "cluster_centers_": Attribute("model", ("K", "D")),
    "labels_": Attribute("int", ("N",), minimum=0, below="K"),
    "inertia_": Attribute("float", minimum=0.0),
}
_COVARIANCES = Attribute(
    "model", _covariance_shape, depends_on=("covariance_type", "K", "D")
)


def _loadable(module: str, components: str, attributes: dict, family) -> Loadable:
    return Loadable(module, components, types.MappingProxyType(attributes), family)


#: The estimator classes a model file may name, by class name.
ESTIMATORS = types.MappingProxyType(
    {
        "GaussianMixture": _loadable(
            "jaxmix.estimators.gaussian_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "means_": Attribute("model", ("K", "D")),
                "covariances_": _COVARIANCES,
                "precisions_": _COVARIANCES,
                "precisions_cholesky_": _COVARIANCES,
            },
            _mixture_family,
        ),
        "StudentMixture": _loadable(
            "jaxmix.estimators.student_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "means_": Attribute("model", ("K", "D")),
                "covariances_": _COVARIANCES,
                "precisions_": _COVARIANCES,
                "precisions_cholesky_": _COVARIANCES,
                "dof_": Attribute("model", ("K",), minimum=0.0),
            },
            _mixture_family,
        ),
        "FactorMixture": _loadable(
            "jaxmix.estimators.factor_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "means_": Attribute("model", ("K", "D")),
                "loadings_": Attribute(
                    "model", _loadings_shape, depends_on=("K", "D", "n_factors")
                ),
                "noise_variances_": Attribute(
                    "model",
                    _noise_shape,
                    minimum=0.0,
                    depends_on=("noise_type", "K", "D"),
                ),
            },
            _mixture_family,
        ),
        "BernoulliMixture": _loadable(
            "jaxmix.estimators.bernoulli_mixture",
            "n_components",
            {**_SOFT_EM, "means_": Attribute("model", ("K", "D"), minimum=0.0)},
            _mixture_family,
        ),
        "PoissonMixture": _loadable(
            "jaxmix.estimators.poisson_mixture",
            "n_components",
            {**_SOFT_EM, "rates_": Attribute("model", ("K", "D"), minimum=0.0)},
            _mixture_family,
        ),
        "GammaMixture": _loadable(
            "jaxmix.estimators.gamma_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "shapes_": Attribute("model", ("K", "D"), minimum=0.0),
                "means_": Attribute("model", ("K", "D"), minimum=0.0),
                "rates_": Attribute("model", ("K", "D"), minimum=0.0),
            },
            _mixture_family,
        ),
        "CategoricalMixture": _loadable(
            "jaxmix.estimators.categorical_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "n_levels_": Attribute("int", minimum=1, dimension="L"),
                "probs_": Attribute("model", ("K", "D", "L"), minimum=0.0),
            },
            _mixture_family,
        ),
        "VonMisesFisherMixture": _loadable(
            "jaxmix.estimators.von_mises_fisher_mixture",
            "n_components",
            {
                **_SOFT_EM,
                "directions_": Attribute("model", ("K", "D")),
                "concentrations_": Attribute("model", ("K",), minimum=0.0),
            },
            _mixture_family,
        ),
        "KMeans": _loadable(
            "jaxmix.estimators.kmeans", "n_clusters", _CLUSTERING, _clustering_family
        ),
        "KMedians": _loadable(
            "jaxmix.estimators.kmeans", "n_clusters", _CLUSTERING, _clustering_family
        ),
    }
)


def _estimator_class(name: str):
    return getattr(importlib.import_module(ESTIMATORS[name].module), name)


# -- parameter values ---------------------------------------------------------------
class _ParamArrays:
    """The parameter arrays of a file being written: ``params.<i>`` entries."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, array: np.ndarray, where: str) -> str:
        if array.dtype.kind not in _PARAM_KINDS:
            raise ValueError(
                f"cannot save parameter {where}: arrays of dtype {array.dtype} "
                "cannot be stored without pickle"
            )
        name = f"{_PARAM_ENTRY}{len(self.arrays)}"
        self.arrays[name] = array
        return name


def _encode(value, arrays: _ParamArrays, where: str, depth: int = 0):
    """A parameter value as JSON, its arrays added to ``arrays``."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"cannot save parameter {where}: nested too deeply")
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return {"type": "scalar", "entry": arrays.add(np.asarray(value), where)}
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        if not math.isfinite(value):  # no estimator accepts one; JSON has none
            raise ValueError(f"cannot save parameter {where}: {value} is not finite")
        return value
    if type(value) in (list, tuple):
        items = [_encode(item, arrays, where, depth + 1) for item in value]
        return items if type(value) is list else {"type": "tuple", "items": items}
    if isinstance(value, np.random.RandomState):
        name, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        return {
            "type": "RandomState",
            "keys": _encode(np.asarray(keys), arrays, where, depth + 1),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": _encode(float(cached), arrays, where, depth + 1),
        }
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        array = np.asarray(value)
        return {"type": "array", "entry": arrays.add(array, where)}
    raise ValueError(
        f"cannot save parameter {where}: values of type {type(value).__name__} "
        "cannot be stored without pickle"
    )


class _Decoder:
    """Parameter values from a header, reading each ``params.<i>`` entry once."""

    def __init__(self, read_param_array: Callable[[str, str], np.ndarray]):
        self.read = read_param_array
        self.used: set[str] = set()

    def value(self, value, where: str, depth: int = 0):
        if depth > _MAX_DEPTH:
            raise ValueError(f"parameter {where} is nested too deeply")
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) is list:
            return [self.value(item, where, depth + 1) for item in value]
        if type(value) is not dict:
            raise ValueError(f"parameter {where} has an unreadable value {value!r}")
        kind = value.get("type")
        decode = {
            "tuple": self._tuple,
            "array": self._array,
            "scalar": self._scalar,
            "RandomState": self._random_state,
        }.get(kind if isinstance(kind, str) else "")
        if decode is None:
            raise ValueError(f"parameter {where} has an unknown value type {kind!r}")
        return decode(value, where, depth)

    @staticmethod
    def _fields(value: dict, where: str, fields: set) -> None:
        if set(value) != fields | {"type"}:
            raise ValueError(
                f"parameter {where}: a {value['type']!r} value has fields "
                f"{sorted(fields | {'type'})}, got {sorted(value)}"
            )

    def _tuple(self, value, where, depth):
        self._fields(value, where, {"items"})
        if type(value["items"]) is not list:
            raise ValueError(f"parameter {where}: tuple items must be a list")
        return tuple(self.value(item, where, depth + 1) for item in value["items"])

    def _entry(self, value, where) -> np.ndarray:
        self._fields(value, where, {"entry"})
        entry = value["entry"]
        if not isinstance(entry, str) or not entry.startswith(_PARAM_ENTRY):
            raise ValueError(
                f"parameter {where}: an array entry is named '{_PARAM_ENTRY}<i>', "
                f"got {entry!r}"
            )
        if entry in self.used:
            raise ValueError(f"parameter {where}: array {entry!r} is used twice")
        self.used.add(entry)
        return self.read(entry, where)

    def _array(self, value, where, depth):
        del depth
        return self._entry(value, where)

    def _scalar(self, value, where, depth):
        del depth
        array = self._entry(value, where)
        if array.shape != ():
            raise ValueError(
                f"parameter {where}: a NumPy scalar is a 0-d array, got shape "
                f"{array.shape}"
            )
        return array[()]

    def _random_state(self, value, where, depth):
        self._fields(value, where, {"keys", "pos", "has_gauss", "cached_gaussian"})
        keys = self.value(value["keys"], where, depth + 1)
        cached = self.value(value["cached_gaussian"], where, depth + 1)
        pos, has_gauss = value["pos"], value["has_gauss"]
        if (
            not isinstance(keys, np.ndarray)
            or keys.dtype != np.uint32
            or keys.shape != (624,)
            or type(pos) is not int
            or not 0 <= pos <= 624
            or has_gauss not in (0, 1)
            or type(has_gauss) is not int
            or type(cached) is not float
        ):
            raise ValueError(
                f"parameter {where}: not a Mersenne Twister state (624 uint32 "
                "keys, a position in [0, 624], has_gauss 0 or 1, a float)"
            )
        state = np.random.RandomState()
        state.set_state(("MT19937", keys, pos, has_gauss, cached))
        return state


# -- arrays of a file ---------------------------------------------------------------
class _Archive:
    """The ``.npy`` entries of an opened model file, by name without ``.npy``."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        infos = archive.infolist()
        names = [info.filename for info in infos]
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise ValueError(
                    f"entry {info.filename!r} is not an array (.npy): not a model file"
                )
        if len(set(names)) != len(names):
            raise ValueError("the file holds an entry twice")
        self.infos = {info.filename[: -len(".npy")]: info for info in infos}

    def names(self) -> set[str]:
        return set(self.infos)

    def declared(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype an entry declares, read before its data."""
        info = self.infos[name]
        with self.archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"array {name!r} has .npy version {version}")
        if dtype.hasobject:
            raise ValueError(
                f"array {name!r} holds Python objects, which are never loaded"
            )
        size = math.prod(shape) * dtype.itemsize
        if size > info.file_size:
            raise ValueError(
                f"array {name!r} declares shape {shape} ({size} bytes) but its "
                f"entry holds {info.file_size} bytes: the file is truncated or "
                "corrupt"
            )
        return shape, dtype

    def read(self, name: str) -> np.ndarray:
        with self.archive.open(self.infos[name]) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)


def _shape_text(shape) -> str:
    """``(K, D)`` rather than ``('K', 'D')``."""
    items = [str(item) for item in shape]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


_KINDS = {
    "int": ("iu", "an integer"),
    "bool": ("b", "a boolean"),
    "str": ("U", "a string"),
}


class _Dimensions:
    """Sizes of the dimensions named in shapes, and where each comes from."""

    def __init__(self, components: str, n_components: int):
        self.sizes = {"K": n_components}
        self.sources = {"K": components}

    def set(self, symbol: str, size: int, source: str) -> None:
        self.sizes[symbol] = size
        self.sources[symbol] = source

    def explain(self, names, params: dict) -> str:
        """``K = n_components = 2, D = n_features_in_ = 3`` for the given names."""
        parts = []
        for name in dict.fromkeys(names):
            if name in self.sizes:
                parts.append(f"{name} = {self.sources[name]} = {self.sizes[name]}")
            elif name in params:
                parts.append(f"{name}={params[name]!r}")
        return ", ".join(parts)


def _check_declared(
    name: str, rule: Attribute, shape, dtype, dims: _Dimensions, params, model_dtype
) -> None:
    """Dtype kind and shape of one attribute, from its ``.npy`` header."""
    if rule.kind in ("model", "float"):
        floats = (np.dtype(np.float32), np.dtype(np.float64))
        allowed = (
            floats if model_dtype is None or rule.kind == "float" else (model_dtype,)
        )
        ok = dtype in allowed
        expected = " or ".join(str(a) for a in allowed)
        if len(allowed) == 1:
            expected += " (the dtype of the model's other arrays)"
    else:
        kinds, expected = _KINDS[rule.kind]
        ok = dtype.kind in kinds
    if not ok:
        raise ValueError(
            f"fitted attribute {name!r} must be {expected}, got dtype {dtype}"
        )
    if callable(rule.shape):
        symbols, want = rule.depends_on, tuple(rule.shape(dims.sizes, params))
    else:
        symbols, want = rule.shape, tuple(dims.sizes.get(s, s) for s in rule.shape)
    allowed_shapes = [want] + ([(0,)] if rule.may_be_empty else [])
    if not any(
        len(shape) == len(allowed)
        and all(w == "N" or w == s for w, s in zip(allowed, shape, strict=True))
        for allowed in allowed_shapes
    ):
        shapes = " or ".join(_shape_text(a) for a in allowed_shapes)
        if not callable(rule.shape) and any(isinstance(s, str) for s in rule.shape):
            shapes = f"{_shape_text(rule.shape)} = {shapes}"
        how = dims.explain(symbols, params)
        got = _shape_text(shape) if shape else "a scalar"
        raise ValueError(
            f"fitted attribute {name!r} must have shape {shapes}"
            f"{f' ({how})' if how else ''}, got {got}"
        )


def _check_values(name: str, rule: Attribute, array: np.ndarray, dims: _Dimensions):
    """Finiteness and bounds of one attribute's values."""
    if rule.kind in ("model", "float"):
        bad = np.isnan(array) | np.isposinf(array)
        if not rule.allow_neg_inf:
            bad |= np.isneginf(array)
        if bad.any():
            allowed = "finite or -inf" if rule.allow_neg_inf else "finite"
            raise ValueError(
                f"fitted attribute {name!r} contains NaN or infinity; it must be "
                f"{allowed}"
            )
    if array.size == 0 or rule.kind in ("str", "bool"):
        return
    if rule.minimum is not None and array.min() < rule.minimum:
        raise ValueError(
            f"fitted attribute {name!r} must be >= {rule.minimum}, got {array.min()}"
        )
    if rule.below is not None and array.max() >= dims.sizes[rule.below]:
        raise ValueError(
            f"fitted attribute {name!r} must be < {rule.below} = "
            f"{dims.sources[rule.below]} = {dims.sizes[rule.below]}, got {array.max()}"
        )


def _as_attribute(rule: Attribute, array: np.ndarray):
    """The value the estimator itself holds for a checked array."""
    if rule.as_list:
        return array.tolist()
    if array.ndim == 0:
        return array.item()
    if rule.kind == "str":
        return array.astype(object)
    return array


def _check_attributes(
    cls_name: str,
    loadable: Loadable,
    params: dict,
    declared: Callable,
    read: Callable,
    present,
) -> dict:
    """Checked fitted attributes: every required one declared, nothing else.

    ``declared(name)`` gives the (shape, dtype) an attribute declares, checked
    before ``read(name)`` reads its data.

    Returns:
      ``{name: value}`` as the estimator holds them (scalars as Python
      numbers, ``lower_bounds_`` a list).
    """
    rules = loadable.attributes
    unknown = sorted(set(present) - set(rules))
    if unknown:
        raise ValueError(
            f"unknown array {unknown[0]!r}: not a fitted attribute of {cls_name}, "
            f"whose model files hold {sorted(rules)} only"
        )
    for name, rule in rules.items():
        if rule.required and name not in present:
            kind = "float32 or float64" if rule.kind == "model" else rule.kind
            what = f"{kind} scalar" if rule.shape == () else f"{kind} array"
            raise ValueError(
                f"missing fitted attribute {name!r} of {cls_name} (a {what})"
            )
    dims = _Dimensions(loadable.components, params[loadable.components])
    values, model_dtype = {}, None
    # Scalars first: the dimensions of the arrays come from them.
    names = sorted(
        (name for name in rules if name in present),
        key=lambda name: rules[name].shape != (),
    )
    for name in names:
        rule = rules[name]
        shape, dtype = declared(name)
        _check_declared(name, rule, shape, dtype, dims, params, model_dtype)
        array = read(name)
        _check_values(name, rule, array, dims)
        if rule.kind == "model":
            model_dtype = array.dtype
        if rule.dimension is not None:
            dims.set(rule.dimension, int(array), name)
        values[name] = _as_attribute(rule, array)
    return values


# -- saving -------------------------------------------------------------------------
def _registered(estimator) -> Loadable:
    name = type(estimator).__name__
    if name not in ESTIMATORS or _estimator_class(name) is not type(estimator):
        raise ValueError(
            f"cannot save a {type(estimator).__qualname__}: only jaxmix's estimators "
            f"{sorted(ESTIMATORS)} can be saved"
        )
    return ESTIMATORS[name]


def _attribute_array(name: str, rule: Attribute, value) -> np.ndarray:
    if rule.kind == "str":
        return np.asarray(value, dtype=str)
    if rule.as_list:
        return np.asarray(value, dtype=np.float64).reshape(-1)
    return np.asarray(value)


def save_model(path, estimator) -> None:
    """Write a fitted estimator to ``path`` (an ``.npz`` file), without pickle.

    Every constructor parameter (numbers, strings, None, tuples, lists, NumPy
    arrays and scalars, a ``RandomState``) and every fitted attribute is
    stored; :func:`load_model` gives back an estimator with equal
    ``get_params()``, equal fitted attributes and therefore equal scores and
    refits. The attributes are checked by the loader's rules before the file
    is written, so a saved file always loads.

    Args:
      path: a file name or a writable binary file (NumPy adds ``.npz`` to a
        name without it).
      estimator: a fitted jaxmix estimator (one of :data:`ESTIMATORS`).

    Raises:
      ValueError: an estimator that is not jaxmix's, not fitted, or holding a
        value that cannot be stored without pickle.

    Examples:
      >>> import io, numpy as np, jaxmix
      >>> from jaxmix.io import load_model, save_model
      >>> X = np.array([[1.0, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
      >>> model = jaxmix.KMeans(n_clusters=2, init=X[[0, 3]]).fit(X)
      >>> buffer = io.BytesIO()
      >>> save_model(buffer, model)
      >>> _ = buffer.seek(0)
      >>> load_model(buffer).predict([[0.0, 0], [12, 3]])
      array([0, 1], dtype=int32)
    """
    loadable = _registered(estimator)
    if not estimator.__sklearn_is_fitted__():
        raise ValueError(
            f"this {type(estimator).__name__} is not fitted yet: fit it before "
            "saving it"
        )
    estimator._validate_params()  # as the loader will
    arrays = _ParamArrays()
    params = {
        name: _encode(value, arrays, repr(name))
        for name, value in estimator.get_params(deep=False).items()
    }
    fitted = {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("_") or name in _REBUILT:
            continue
        if name not in loadable.attributes:
            raise ValueError(
                f"cannot save {type(estimator).__name__}.{name}: it is not a fitted "
                "attribute that jaxmix.io knows how to store and check"
            )
        fitted[name] = _attribute_array(name, loadable.attributes[name], value)
    # The loader's own checks: a file that would not load is never written.
    _check_attributes(
        type(estimator).__name__,
        loadable,
        estimator.get_params(deep=False),
        lambda name: (fitted[name].shape, fitted[name].dtype),
        fitted.__getitem__,
        fitted,
    )
    header = {
        "format": FORMAT,
        "version": VERSION,
        "class": type(estimator).__name__,
        "params": params,
    }
    text = json.dumps(header, allow_nan=False)
    np.savez(
        path,
        allow_pickle=False,
        **{_HEADER: np.asarray(text)},
        **arrays.arrays,
        **fitted,
    )


# -- loading ------------------------------------------------------------------------
def _read_header(archive: _Archive) -> dict:
    if _HEADER not in archive.names():
        raise ValueError("not a jaxmix model file (no header)")
    size = archive.infos[_HEADER].file_size
    if size > MAX_HEADER_BYTES:
        raise ValueError(
            f"the header is {size} bytes, more than the {MAX_HEADER_BYTES} a model "
            "file's header may have: refused without reading it"
        )
    shape, dtype = archive.declared(_HEADER)
    if shape != () or dtype.kind != "U":
        raise ValueError("not a jaxmix model file (the header is not a string)")
    text = str(archive.read(_HEADER)[()])
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"the header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise ValueError("not a jaxmix model file (the header is not a JSON object)")
    return header


def _check_version(header: dict) -> int:
    if header.get("format") == _FORMAT_1:
        version = 1
    elif header.get("format") == FORMAT:
        version = header.get("version")
        if type(version) is not int or version < 2:
            raise ValueError(f"the header's format version {version!r} is invalid")
    else:
        raise ValueError(f"not a jaxmix model file (format {header.get('format')!r})")
    if version > VERSION:
        raise ValueError(
            f"the file has model format version {version}, written by a newer "
            f"jaxmix; this jaxmix reads versions up to {VERSION}: upgrade jaxmix "
            "to load it"
        )
    expected = _HEADER_KEYS - ({"version"} if version == 1 else set())
    if set(header) != expected:
        raise ValueError(
            f"the header has fields {sorted(header)}, expected {sorted(expected)}"
        )
    return version


def _load(archive: _Archive):
    header = _read_header(archive)
    _check_version(header)
    name = header["class"]
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator class {name!r}: a model file holds one of "
            f"{sorted(ESTIMATORS)}"
        )
    loadable = ESTIMATORS[name]
    cls = _estimator_class(name)
    if not isinstance(header["params"], dict):
        raise ValueError("the header's params are not a JSON object")
    accepted = set(cls._get_param_names())
    unknown = sorted(set(header["params"]) - accepted)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} of {name}: its parameters are "
            f"{sorted(accepted)}"
        )

    def read_param_array(entry: str, where: str) -> np.ndarray:
        if entry not in archive.names():
            raise ValueError(f"parameter {where}: the file has no array {entry!r}")
        _, dtype = archive.declared(entry)
        if dtype.kind not in _PARAM_KINDS:
            raise ValueError(f"parameter {where}: arrays of dtype {dtype} are refused")
        return archive.read(entry)

    decoder = _Decoder(read_param_array)
    params = {
        key: decoder.value(value, repr(key)) for key, value in header["params"].items()
    }
    estimator = cls(**params)
    # The estimator's own parameter checks, before anything is built on them.
    estimator._validate_params()
    params = estimator.get_params(deep=False)
    present = archive.names() - {_HEADER} - decoder.used
    fitted = _check_attributes(
        name, loadable, params, archive.declared, archive.read, present
    )
    for key, value in fitted.items():
        setattr(estimator, key, value)
    estimator.family_ = loadable.family(estimator)
    return estimator


def load_model(path):
    """Read an estimator written by :func:`save_model`.

    Nothing in the file is trusted: the class must be one of
    :data:`ESTIMATORS`, the parameters pass the estimator's own validation,
    and every fitted attribute must be declared for the class, with the
    declared dtype kind and the shape derived from the parameters and
    ``n_features_in_``, finite where a fit is finite; a missing attribute is an
    error. Nothing is called but the loader, the class's ``__init__``, its
    parameter validation and the method rebuilding its fitted family; no array
    is read before its name, dtype and shape are checked.

    Args:
      path: a file name or a readable binary file.

    Returns:
      The fitted estimator.

    Raises:
      ValueError: the file is not a jaxmix model, is truncated or corrupt,
        comes from a newer format version, or breaks any of the rules above
        (the message names the class, parameter or attribute, and what was
        expected).
    """
    if hasattr(path, "read"):
        return _load_file(path, getattr(path, "name", "model file"))
    with open(path, "rb") as stream:  # a missing file is FileNotFoundError
        return _load_file(stream, path)


def _load_file(stream, where):
    try:
        with zipfile.ZipFile(stream) as zipped:
            return _load(_Archive(zipped))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
        RuntimeError,
    ):
        # Not a zip, a truncated one, or entries that do not decompress (or are
        # encrypted: RuntimeError).
        raise ValueError(
            f"{where} is not a jaxmix model file, or is truncated or corrupt"
        ) from None
