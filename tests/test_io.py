"""Model files: exact round trips of every estimator, and crafted files refused.

Every estimator is fitted once per dtype on Old Faithful (272 × 2, or data
derived from it) with few iterations: one data shape keeps the compiled
programs few. The crafted files are edits of a saved GaussianMixture; each
must be refused with a ValueError naming what is wrong, and leave the
estimator classes untouched.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import warnings
import zipfile

import numpy as np
import pytest

import jaxmix
from jaxmix import (
    BernoulliMixture,
    CategoricalMixture,
    FactorMixture,
    GammaMixture,
    GaussianMixture,
    KMeans,
    KMedians,
    PoissonMixture,
    StudentMixture,
    VonMisesFisherMixture,
)
from jaxmix.datasets import load_faithful
from jaxmix.io import ESTIMATORS, MAX_HEADER_BYTES, VERSION, load_model, save_model

X = load_faithful()[0]  # (272, 2)
BINARY = (X > np.median(X, axis=0)).astype(np.float64)
COUNTS = np.round(X / np.array([1.0, 10.0]))
CODES = np.stack(
    [np.digitize(column, np.quantile(column, [1 / 3, 2 / 3])) for column in X.T],
    axis=1,
).astype(np.float64)

# Each estimator with parameters of every kind a file must keep: arrays,
# tuples (of arrays), lists, NumPy scalars, MAP priors, an int random_state,
# fixed parameters.
MODELS = {
    "GaussianMixture": (
        lambda: GaussianMixture(
            2,
            max_iter=10,
            random_state=0,
            weights_init=np.array([0.4, 0.6]),
            fixed_params=["weights"],
            weight_concentration_prior=np.array([2.0, 3.0]),
            mean_prior=(3.5, 70.0),
            degrees_of_freedom_prior=np.float64(3.0),
            covariance_prior=np.diag([0.1, 30.0]),
        ),
        X,
    ),
    "BernoulliMixture": (
        lambda: BernoulliMixture(
            2,
            max_iter=10,
            random_state=1,
            weights_init=[0.4, 0.6],
            weight_concentration_prior=2.0,
            mean_prior=(2.0, np.full((2, 2), 3.0)),
        ),
        BINARY,
    ),
    "StudentMixture": (
        lambda: StudentMixture(
            2, max_iter=10, random_state=7, dof=np.array([3.0, 30.0])
        ),
        X,
    ),
    "FactorMixture": (
        lambda: FactorMixture(
            2, n_factors=1, noise_type="isotropic", max_iter=10, random_state=8
        ),
        np.c_[X, X[:, :1] * X[:, 1:] / 50.0],
    ),
    "PoissonMixture": (
        lambda: PoissonMixture(2, max_iter=10, random_state=2, rate_prior=(2.0, 0.5)),
        COUNTS,
    ),
    "CategoricalMixture": (
        lambda: CategoricalMixture(
            2, n_levels=3, max_iter=10, random_state=3, level_prior=1.5
        ),
        CODES,
    ),
    "GammaMixture": (
        lambda: GammaMixture(
            2, max_iter=10, random_state=5, weights_init=(0.5, 0.5), m_step_iter=4
        ),
        X,
    ),
    "VonMisesFisherMixture": (
        lambda: VonMisesFisherMixture(
            2,
            max_iter=10,
            random_state=6,
            normalize=True,
            concentrations_init=np.array([5.0, 50.0]),
            weight_concentration_prior=2.0,
        ),
        X,
    ),
    "KMeans": (lambda: KMeans(3, n_init=2, max_iter=20, random_state=4), X),
    "KMedians": (lambda: KMedians(2, init=X[[0, 1]], max_iter=20), X),
}
DTYPES = ("float64", "float32")


def _fit(estimator, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few iterations: convergence warnings
        return estimator.fit(data)


@functools.cache
def fitted(name: str, dtype: str):
    """One fitted model per estimator and dtype (never mutated by the tests)."""
    make, data = MODELS[name]
    return _fit(make(), data.astype(dtype))


def data_of(name: str, dtype: str) -> np.ndarray:
    return MODELS[name][1].astype(dtype)


def saved(estimator) -> bytes:
    buffer = io.BytesIO()
    save_model(buffer, estimator)
    return buffer.getvalue()


def loaded(blob: bytes):
    return load_model(io.BytesIO(blob))


def fitted_attributes(estimator) -> dict:
    """Public fitted attributes, found independently of jaxmix.io's registry."""
    return {
        name: value
        for name, value in vars(estimator).items()
        if name.endswith("_") and not name.startswith("_") and name != "family_"
    }


def assert_same(a, b, where="value"):
    """Equal values of the same types (arrays: dtype, shape and every entry)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, np.random.RandomState):
        assert_same(a.get_state(), b.get_state(), f"{where} state")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_every_estimator_jaxmix_ships_is_loadable():
    from sklearn.base import BaseEstimator

    shipped = {
        name
        for name in dir(jaxmix)
        if isinstance(getattr(jaxmix, name), type)
        and issubclass(getattr(jaxmix, name), BaseEstimator)
    }
    assert shipped == set(ESTIMATORS) == set(MODELS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_exact(name, dtype):
    model = fitted(name, dtype)
    data = data_of(name, dtype)
    copy_ = loaded(saved(model))
    assert type(copy_) is type(model)
    assert_same(copy_.get_params(deep=False), model.get_params(deep=False), "params")
    assert_same(fitted_attributes(copy_), fitted_attributes(model), "attributes")
    assert copy_.__sklearn_is_fitted__()
    # Scores from the restored family (rebuilt by the estimator, not stored).
    assert_same(copy_.predict(data), model.predict(data), "predict")
    assert_same(copy_.score(data), model.score(data), "score")
    if hasattr(model, "score_samples"):
        assert_same(copy_.score_samples(data), model.score_samples(data), "samples")
    # Same params, same result: with the MAP priors kept, a refit is the same
    # fit (a file dropping the priors would refit by maximum likelihood).
    original = _fit(copy.deepcopy(model), data)
    _fit(copy_, data)
    assert_same(fitted_attributes(copy_), fitted_attributes(original), "refit")


def test_parameters_of_every_kind_round_trip():
    # NumPy scalars, a list of lists, a tuple, a float32 array and a
    # RandomState: set after the fit, so no new fit compiles.
    model = copy.deepcopy(fitted("GaussianMixture", "float64"))
    model.set_params(
        n_components=np.int64(2),
        tol=np.float32(1e-3),
        verbose=True,
        means_init=[[3.0, 70.0], [4.0, 80.0]],
        weights_init=(0.5, 0.5),
        precisions_init=np.repeat(np.eye(2, dtype=np.float32)[None], 2, axis=0),
        random_state=np.random.RandomState(7),
    )
    copy_ = loaded(saved(model))
    assert_same(copy_.get_params(deep=False), model.get_params(deep=False), "params")
    # A restored RandomState draws what the original would.
    assert copy_.random_state.randint(1 << 30) == model.random_state.randint(1 << 30)


def test_feature_names_round_trip():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(X, columns=["eruptions", "waiting"])
    model = _fit(MODELS["KMeans"][0](), frame)
    copy_ = loaded(saved(model))
    assert_same(copy_.feature_names_in_, model.feature_names_in_, "names")
    with pytest.raises(ValueError, match="feature names"):
        copy_.predict(frame.rename(columns={"waiting": "wait"}))


def test_version_1_files_load():
    # Format 1 kept the plain parameters and the fitted attributes.
    model = fitted("GaussianMixture", "float64")
    params = {
        key: value
        for key, value in model.get_params().items()
        if value is None or type(value) in (str, int, float, bool)
    }
    header = {"format": "jaxmix-model-1", "class": "GaussianMixture", "params": params}
    arrays = {k: np.asarray(v) for k, v in fitted_attributes(model).items()}
    buffer = io.BytesIO()
    np.savez(buffer, __header__=np.asarray(json.dumps(header)), **arrays)
    copy_ = loaded(buffer.getvalue())
    assert_same(fitted_attributes(copy_), fitted_attributes(model), "attributes")
    for key, value in params.items():
        assert_same(getattr(copy_, key), value, key)


def _as(model, cls):
    """``model`` as an instance of ``cls`` (same parameters and attributes)."""
    clone = cls(**model.get_params())
    vars(clone).update(vars(model))
    return clone


# -- saving refuses what it cannot store exactly -------------------------------------
def test_saving_refuses_what_would_not_load_exactly(tmp_path):
    model = fitted("GaussianMixture", "float64")
    with pytest.raises(ValueError, match="not fitted"):
        save_model(tmp_path / "m.npz", GaussianMixture(2))

    class Subclass(GaussianMixture):
        pass

    with pytest.raises(ValueError, match="only jaxmix's estimators"):
        save_model(tmp_path / "m.npz", _as(model, Subclass))
    extra = copy.deepcopy(model)
    extra.extra_ = np.zeros(3)
    with pytest.raises(ValueError, match="extra_"):
        save_model(tmp_path / "m.npz", extra)
    odd = copy.deepcopy(model).set_params(mean_prior={"m": 1.0})
    with pytest.raises(ValueError, match="'mean_prior'.*dict"):
        save_model(tmp_path / "m.npz", odd)
    broken = copy.deepcopy(model)
    broken.means_ = np.zeros((5, 7))
    with pytest.raises(ValueError, match="'means_' must have shape"):
        save_model(tmp_path / "m.npz", broken)
    assert not (tmp_path / "m.npz").exists()


# -- crafted files --------------------------------------------------------------------
GAUSSIAN_ATTRIBUTES = [
    "converged_",
    "covariances_",
    "lower_bound_",
    "lower_bounds_",
    "means_",
    "n_features_in_",
    "n_iter_",
    "precisions_",
    "precisions_cholesky_",
    "weights_",
]
FLOAT_ATTRIBUTES = [
    "covariances_",
    "lower_bound_",
    "lower_bounds_",
    "means_",
    "precisions_",
    "precisions_cholesky_",
    "weights_",
]


@pytest.fixture(scope="module")
def blob() -> bytes:
    return saved(fitted("GaussianMixture", "float64"))


def entries(blob: bytes) -> dict:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def header_of(blob: bytes) -> dict:
    return json.loads(str(entries(blob)["__header__"]))


def craft(blob: bytes, *, header=None, drop=(), **arrays) -> bytes:
    """The file with its header replaced, entries dropped, arrays set."""
    contents = entries(blob)
    if header is not None:
        contents["__header__"] = np.asarray(json.dumps(header))
    for name in drop:
        del contents[name]
    contents.update(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    return buffer.getvalue()


def with_header(blob: bytes, **fields) -> bytes:
    return craft(blob, header={**header_of(blob), **fields})


def _class_state() -> dict:
    classes = {c for name in ESTIMATORS for c in type.mro(getattr(jaxmix, name))}
    return {cls: dict(vars(cls)) for cls in classes}


def assert_refused(blob: bytes, match: str) -> None:
    """Refused with a ValueError matching ``match``, no class changed."""
    before = _class_state()
    with pytest.raises(ValueError, match=match):
        load_model(io.BytesIO(blob))
    assert _class_state() == before


def test_the_gaussian_table_lists_every_fitted_attribute():
    model = fitted("GaussianMixture", "float64")
    assert sorted(fitted_attributes(model)) == GAUSSIAN_ATTRIBUTES


@pytest.mark.parametrize(
    "name",
    [
        "select_n_components",
        "fit",
        "_HardClustering",
        "MixtureEstimator",
        "__builtins__",
        "__class__",
        "gaussianmixture",
        42,
        None,
    ],
)
def test_a_class_outside_the_registry_is_refused(blob, name, monkeypatch):
    calls = []
    monkeypatch.setattr(jaxmix, "select_n_components", lambda *a, **k: calls.append(a))
    assert_refused(
        with_header(blob, **{"class": name}), f"unknown estimator class {name!r}"
    )
    assert not calls


@pytest.mark.parametrize(
    "name", ["fit", "predict", "__class__", "_converged", "family_", "foo_", "params.7"]
)
def test_an_unknown_array_is_refused(blob, name):
    assert_refused(craft(blob, **{name: np.zeros(2)}), f"unknown array '{name}'")


@pytest.mark.parametrize("name", GAUSSIAN_ATTRIBUTES)
def test_a_wrong_shape_is_refused(blob, name):
    value = entries(blob)[name]
    wrong = (
        np.stack([value, value])
        if value.ndim == 0
        else np.concatenate([value, value[:1]])
    )
    assert_refused(craft(blob, **{name: wrong}), f"'{name}' must have shape")


@pytest.mark.parametrize("name", GAUSSIAN_ATTRIBUTES)
def test_a_wrong_dtype_is_refused(blob, name):
    value = entries(blob)[name]
    wrong = value.astype(np.int64 if value.dtype.kind == "f" else np.float64)
    assert_refused(craft(blob, **{name: wrong}), f"'{name}' must be .*got dtype")


@pytest.mark.parametrize("name", FLOAT_ATTRIBUTES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_infinity_are_refused(blob, name, bad):
    value = entries(blob)[name].copy()
    value.flat[0] = bad
    assert_refused(craft(blob, **{name: value}), f"'{name}' contains NaN or infinity")


@pytest.mark.parametrize("name", GAUSSIAN_ATTRIBUTES)
def test_a_missing_attribute_is_refused(blob, name):
    assert_refused(craft(blob, drop=[name]), f"missing fitted attribute '{name}'")


def test_shape_errors_say_what_was_expected(blob):
    assert_refused(
        craft(blob, means_=np.zeros((5, 7))),
        r"'means_' must have shape \(K, D\) = \(2, 2\) "
        r"\(K = n_components = 2, D = n_features_in_ = 2\), got \(5, 7\)",
    )
    # n_components of the header against the arrays of the file
    params = {**header_of(blob)["params"], "n_components": 3}
    assert_refused(
        with_header(blob, params=params), r"'weights_' must have shape \(K,\) = \(3,\)"
    )
    # one model, one dtype
    means = entries(blob)["means_"].astype(np.float32)
    assert_refused(craft(blob, means_=means), "other arrays")
    # labels outside the clusters
    kmeans = saved(fitted("KMeans", "float64"))
    labels = entries(kmeans)["labels_"].copy()
    labels[0] = 3
    assert_refused(craft(kmeans, labels_=labels), r"'labels_' must be < K")


def test_a_header_that_is_not_json_is_refused(blob):
    assert_refused(craft(blob, __header__=np.asarray("{'class': 1")), "not valid JSON")
    assert_refused(craft(blob, __header__=np.asarray("[1, 2]")), "not a JSON object")
    assert_refused(craft(blob, __header__=np.asarray("[" * 100_000)), "not valid JSON")
    assert_refused(craft(blob, __header__=np.zeros(3)), "header is not a string")


def test_an_oversized_header_is_refused_unread(blob, monkeypatch):
    def parse(*args, **kwargs):
        raise AssertionError("the oversized header was parsed")

    monkeypatch.setattr(json, "loads", parse)
    text = np.asarray(" " * (MAX_HEADER_BYTES // 4 + 1))  # 4 bytes per character
    assert_refused(craft(blob, __header__=text), "refused without reading it")


def test_a_truncated_or_corrupt_file_is_refused(blob):
    for size in (10, len(blob) // 2, len(blob) - 10):
        assert_refused(blob[:size], "truncated or corrupt")
    # an array declaring far more data than it holds: refused before allocating
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    archive = io.BytesIO(craft(blob, drop=["lower_bounds_"]))
    with zipfile.ZipFile(archive, "a") as zipped:
        zipped.writestr("lower_bounds_.npy", buffer.getvalue() + b"\0" * 16)
    assert_refused(archive.getvalue(), "truncated or corrupt")
    # a pickled object array
    assert_refused(
        craft(blob, means_=np.array([None, {}], dtype=object)), "Python objects"
    )


def test_other_headers_are_refused(blob):
    assert_refused(with_header(blob, version=VERSION + 1), "newer jaxmix")
    assert_refused(with_header(blob, version="2"), "version '2' is invalid")
    assert_refused(with_header(blob, format="other-model"), "not a jaxmix model")
    assert_refused(with_header(blob, extra=1), "header has fields")
    no_header = io.BytesIO()
    np.savez(no_header, a=np.zeros(2))
    assert_refused(no_header.getvalue(), "not a jaxmix model file")


def test_parameters_are_validated_by_the_estimator(blob):
    params = header_of(blob)["params"]
    cases = {
        "fit": (1, "unknown parameter 'fit'"),
        "n_components": ("2", "'n_components' parameter"),
        "covariance_type": ("bogus", "'covariance_type' parameter"),
        "max_iter": (-1, "'max_iter' parameter"),
        "tol": ({"type": "eval", "code": "1"}, "unknown value type 'eval'"),
        "means_init": ({"type": "array", "entry": "means_"}, "named 'params.<i>'"),
        "weights_init": ({"type": "array", "entry": "params.9"}, "no array"),
    }
    for name, (value, match) in cases.items():
        assert_refused(with_header(blob, params={**params, name: value}), match)
    twice = {**params, "precisions_init": params["covariance_prior"]}
    assert_refused(with_header(blob, params=twice), "used twice")
