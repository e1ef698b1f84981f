"""jaxmix's estimators as scikit-learn estimators: pipelines, model selection,
cross-validation, clone, HTML repr, pandas output, input kinds, check_estimator.

Where the algorithm is the same, results are compared with scikit-learn's own
estimators from the same start: GaussianMixture from the same
``weights_init``/``means_init``/``precisions_init`` (float64), KMeans from the same
``init`` array (Lloyd's algorithm).

``check_estimator`` runs in two subprocesses (this file run as a script), one
per core, with XLA's backend optimisation level 0: its checks fit many tiny
problems whose data shapes each compile a program, and that flag compiles about
40% faster (it can change the last bit of rounding, not the algorithm).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import spread_start
from sklearn import datasets
from sklearn.base import clone
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags

import jaxmix
from jaxmix.estimators import bic_scorer
from jaxmix.estimators.base import EstimatorBase


def checked_estimators() -> dict:
    """Estimators for ``check_estimator``, and the checks expected to fail (why).

    The settings are scikit-learn's own for its estimators' checks (``n_init=2,
    max_iter=5``), with the cheapest seeding (each program compiles once per
    data shape; the API under test does not depend on the seeding).
    ``BernoulliMixture`` binarizes at 0: the checks feed it real-valued data.
    ``PoissonMixture`` and ``CategoricalMixture`` take only non-negative
    integers (counts, codes); their input tags (``positive_only``,
    ``categorical``) make the checks feed such data, as for scikit-learn's
    CategoricalNB.
    ``GammaMixture`` needs strictly positive data; see ``STRICTLY_POSITIVE``.
    """
    weights_not_repeats = (
        "random seeding draws among the distinct rows, so weights and repeated "
        "rows start differently (as scikit-learn's KMeans, which lists it too); "
        "from a given init the weights are exact (tests/test_kmeans.py)"
    )
    reals_not_integers = (
        "the check fits uniform reals in [0, 1) without applying the input tags, "
        "and non-integer data is rejected (ValueError), never rounded"
    )
    return {
        "GaussianMixture": (
            jaxmix.GaussianMixture(
                n_init=2, max_iter=5, init_params="random_from_data"
            ),
            {},
        ),
        "KMeans": (
            jaxmix.KMeans(n_clusters=2, n_init=2, max_iter=5, init="random"),
            {"check_sample_weight_equivalence_on_dense_data": weights_not_repeats},
        ),
        "KMedians": (
            jaxmix.KMedians(n_clusters=2, n_init=2, max_iter=5, init="random"),
            {"check_sample_weight_equivalence_on_dense_data": weights_not_repeats},
        ),
        "FactorMixture": (
            jaxmix.FactorMixture(n_init=2, max_iter=5, init_params="random_from_data"),
            {},
        ),
        "StudentMixture": (
            jaxmix.StudentMixture(n_init=2, max_iter=5, init_params="random_from_data"),
            {},
        ),
        "BernoulliMixture": (
            jaxmix.BernoulliMixture(n_init=2, max_iter=5, binarize=0.0),
            {},
        ),
        "PoissonMixture": (
            jaxmix.PoissonMixture(n_init=2, max_iter=5, init_params="random"),
            {"check_sample_weight_equivalence_on_dense_data": reals_not_integers},
        ),
        "CategoricalMixture": (
            jaxmix.CategoricalMixture(n_init=2, max_iter=5),
            {"check_sample_weight_equivalence_on_dense_data": reals_not_integers},
        ),
        "VonMisesFisherMixture": (
            jaxmix.VonMisesFisherMixture(
                n_init=2, max_iter=5, init_params="random_from_data", normalize=True
            ),
            {
                "check_estimators_dtypes": (
                    "the check's integer data (3·U[0, 1) truncated) has rows of "
                    "zeros, which have no direction: normalize=True refuses them "
                    "with a ValueError"
                )
            },
        ),
        "GammaMixture": (
            jaxmix.GammaMixture(n_init=2, max_iter=5, init_params="random_from_data"),
            {},
        ),
    }


# -- the check_estimator worker ---------------------------------------------------
# Estimators whose data must be strictly positive. scikit-learn has one tag,
# ``positive_only``, and its checks meet it with ``X - X.min()``, which holds an
# exact 0: outside a gamma's support, so refused, and two dozen checks would fail
# on that one value. Their own comment says such estimators "only accept strictly
# positive data", and the targets of ``positive_only`` estimators are shifted by
# 1 + |min|; the worker shifts X by 1 the same way for these estimators. Should
# the private helper be renamed, the worker stops with an AttributeError.
STRICTLY_POSITIVE = {"GammaMixture"}


@contextlib.contextmanager
def _strictly_positive_data(checks_module):
    """Within: the checks' ``positive_only`` data is strictly positive (X ≥ 1)."""
    enforce = checks_module._enforce_estimator_tags_X

    def strictly_positive(estimator, X, X_test=None, **kwargs):
        out = enforce(estimator, X, X_test, **kwargs)
        if not get_tags(estimator).input_tags.positive_only:
            return out
        if X_test is None:
            return out + 1
        return out[0] + 1, out[1] + 1

    checks_module._enforce_estimator_tags_X = strictly_positive
    try:
        yield
    finally:
        checks_module._enforce_estimator_tags_X = enforce


def _check(estimator, expected: dict) -> dict:
    """``check_estimator``'s outcome for every check, and the time taken."""
    from sklearn.utils import estimator_checks
    from sklearn.utils.estimator_checks import check_estimator

    data = (
        _strictly_positive_data(estimator_checks)
        if type(estimator).__name__ in STRICTLY_POSITIVE
        else contextlib.nullcontext()
    )

    records, clock = [], [time.perf_counter()]

    def record(estimator, check_name, exception, status, expected_to_fail, **_):
        now = time.perf_counter()
        message = (
            "" if exception is None else f"{type(exception).__name__}: {exception}"
        )
        records.append(
            {
                "check": check_name,
                "status": status,
                "expected_to_fail": bool(expected_to_fail),
                "message": message[:2000],
                "seconds": now - clock[0],
            }
        )
        clock[0] = now

    start = time.perf_counter()
    with data:
        check_estimator(
            estimator,
            expected_failed_checks=expected,
            on_skip=None,
            on_fail=None,
            callback=record,
        )
    return {"seconds": time.perf_counter() - start, "checks": records}


def _run_checks(names: list[str], report: str) -> None:
    """Run ``check_estimator`` on the named estimators; write the outcomes."""
    warnings.simplefilter("ignore")
    table = checked_estimators()
    outcomes = {name: _check(*table[name]) for name in names}
    Path(report).write_text(json.dumps(outcomes))


# -- the data, and starts shared with scikit-learn ----------------------------------
@pytest.fixture(scope="module")
def iris() -> np.ndarray:
    return datasets.load_iris().data


def gaussian_start(X, n_components, covariance_type="full") -> dict:
    weights, means, precisions = spread_start(X, n_components, covariance_type)
    return dict(
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        covariance_type=covariance_type,
    )


# One max_iter for every GaussianMixture fit below: it is static (one compiled
# program per number of components and data size bucket).
FIT = dict(max_iter=10, tol=0.0)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached, on purpose
        return function(*args, **kwargs)


def test_gaussian_pipeline_with_scaler_matches_scikit_learn(iris):
    scaled = StandardScaler().fit_transform(iris)
    start = gaussian_start(scaled, 3) | FIT
    ours = _quiet(
        make_pipeline(StandardScaler(), jaxmix.GaussianMixture(3, **start)).fit, iris
    )
    theirs = _quiet(
        make_pipeline(StandardScaler(), SkGaussianMixture(3, **start)).fit, iris
    )
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(ours[-1], name), getattr(theirs[-1], name), rtol=1e-7, atol=1e-10
        )
    np.testing.assert_array_equal(ours.predict(iris), theirs.predict(iris))
    np.testing.assert_allclose(
        ours.predict_proba(iris), theirs.predict_proba(iris), atol=1e-8
    )
    assert ours.score(iris) == pytest.approx(theirs.score(iris), rel=1e-9)
    np.testing.assert_allclose(
        ours.score_samples(iris), theirs.score_samples(iris), rtol=1e-8
    )
    # The call, with the default start, runs too.
    model = make_pipeline(StandardScaler(), jaxmix.GaussianMixture(3)).fit(iris)
    assert model[-1].means_.shape == (3, 4)


def test_kmeans_pipeline_with_scaler_matches_scikit_learn(iris):
    scaled = StandardScaler().fit_transform(iris)
    centres = scaled[[0, 60, 120]]
    ours = make_pipeline(StandardScaler(), jaxmix.KMeans(3, init=centres)).fit(iris)
    theirs = make_pipeline(
        StandardScaler(), SkKMeans(3, init=centres, n_init=1, algorithm="lloyd")
    ).fit(iris)
    np.testing.assert_array_equal(ours[-1].labels_, theirs[-1].labels_)
    np.testing.assert_allclose(
        ours[-1].cluster_centers_, theirs[-1].cluster_centers_, atol=1e-9
    )
    assert ours[-1].n_iter_ == theirs[-1].n_iter_
    np.testing.assert_allclose(ours.transform(iris), theirs.transform(iris), atol=1e-9)
    assert ours.score(iris) == pytest.approx(theirs.score(iris), rel=1e-10)
    model = make_pipeline(StandardScaler(), jaxmix.KMeans(3)).fit(iris)
    assert model[-1].cluster_centers_.shape == (3, 4)


def _grid_of_starts(X, n_components_values, covariance_types=("full",)):
    """A grid whose every point carries its own start (the shapes depend on it)."""
    return [
        {
            key: [value]
            for key, value in (gaussian_start(X, k, c) | {"n_components": k}).items()
        }
        for k in n_components_values
        for c in covariance_types
    ]


def test_grid_search_over_n_components_matches_scikit_learn(iris):
    grid = _grid_of_starts(iris, [1, 2, 3, 4])
    ours = _quiet(GridSearchCV(jaxmix.GaussianMixture(**FIT), grid, cv=3).fit, iris)
    theirs = _quiet(GridSearchCV(SkGaussianMixture(**FIT), grid, cv=3).fit, iris)
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"],
        theirs.cv_results_["mean_test_score"],
        rtol=1e-8,
    )
    assert ours.best_index_ == theirs.best_index_
    assert ours.best_estimator_.n_components == ours.best_params_["n_components"]
    # The call.
    search = _quiet(
        GridSearchCV(
            jaxmix.GaussianMixture(random_state=0), {"n_components": [1, 2, 3, 4]}
        ).fit,
        iris,
    )
    assert search.best_params_["n_components"] in (1, 2, 3, 4)


def test_cross_val_score_matches_scikit_learn(iris):
    start = gaussian_start(iris, 2) | FIT
    ours = _quiet(cross_val_score, jaxmix.GaussianMixture(2, **start), iris, cv=3)
    theirs = _quiet(cross_val_score, SkGaussianMixture(2, **start), iris, cv=3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    # The call.
    scores = _quiet(cross_val_score, jaxmix.GaussianMixture(2), iris, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_kmeans_cross_validated_on_digits_matches_scikit_learn():
    digits = datasets.load_digits().data
    centres = StandardScaler().fit_transform(digits)[:: len(digits) // 10][:10]
    ours = cross_val_score(
        make_pipeline(StandardScaler(), jaxmix.KMeans(10, init=centres)), digits, cv=3
    )
    theirs = cross_val_score(
        make_pipeline(
            StandardScaler(), SkKMeans(10, init=centres, n_init=1, algorithm="lloyd")
        ),
        digits,
        cv=3,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_bic_scorer_selects_like_scikit_learn(iris):
    # A scaler, then a grid over n_components and covariance_type scored by BIC
    # on the held-out folds (the README's example, with shared starts).
    scaled = StandardScaler().fit_transform(iris)
    grid = [
        {f"gaussianmixture__{key}": value for key, value in point.items()}
        for point in _grid_of_starts(scaled, [2, 3], ("full", "diag"))
    ]
    searches = [
        _quiet(
            GridSearchCV(
                make_pipeline(StandardScaler(), model), grid, scoring=bic_scorer, cv=3
            ).fit,
            iris,
        )
        for model in (jaxmix.GaussianMixture(**FIT), SkGaussianMixture(**FIT))
    ]
    ours, theirs = (search.cv_results_["mean_test_score"] for search in searches)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    assert searches[0].best_index_ == searches[1].best_index_
    best = searches[0].best_estimator_
    assert bic_scorer(best, iris) == pytest.approx(
        -best[-1].bic(best[:-1].transform(iris))
    )
    assert bic_scorer(best[-1], iris) == -best[-1].bic(iris)


def test_randomized_search_with_bic_scorer(iris):
    search = _quiet(
        RandomizedSearchCV(
            jaxmix.GaussianMixture(random_state=0),
            {"n_components": [1, 2, 3, 4], "covariance_type": ["full"]},
            n_iter=3,
            scoring=bic_scorer,
            cv=3,
            random_state=0,
        ).fit,
        iris,
    )
    scores = search.cv_results_["mean_test_score"]
    assert search.best_score_ == np.max(scores)
    refitted = search.best_estimator_.get_params()
    assert all(refitted[key] == value for key, value in search.best_params_.items())
    assert bic_scorer(search.best_estimator_, iris) == -search.best_estimator_.bic(iris)


# -- scikit-learn citizenship without fitting -------------------------------------
# Every estimator jaxmix exports, including those added later.
ALL = [
    getattr(jaxmix, name)
    for name in sorted(jaxmix._LAZY)
    if isinstance(getattr(jaxmix, name), type)
    and issubclass(getattr(jaxmix, name), EstimatorBase)
]


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_clone_and_html_repr(cls):
    model = cls(n_init=3, random_state=5)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    html = model._repr_html_()
    assert cls.__name__ in html and "n_init" in html
    assert repr(model) == f"{cls.__name__}(n_init=3, random_state=5)"
    with pytest.raises(jaxmix.NotFittedError):
        model.predict(np.zeros((3, 2)))


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_invalid_parameters_say_which(cls):
    with pytest.raises(ValueError, match="'n_init' parameter of .* must be an int"):
        cls(n_init=0).fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="'tol' parameter"):
        cls(tol="small").fit(np.zeros((10, 2)))


def test_count_and_code_mixtures_declare_their_input():
    # Non-negative integers only: the input tags say so, and other data is
    # rejected with scikit-learn's wording, never clipped or rounded.
    for model in (jaxmix.PoissonMixture(2), jaxmix.CategoricalMixture(2)):
        tags = get_tags(model).input_tags
        assert tags.positive_only and tags.categorical
        with pytest.raises(ValueError, match="Negative values in data passed to"):
            model.fit([[0.0, 1.0], [-1.0, 2.0], [3.0, 0.0]])
        with pytest.raises(ValueError, match="non-integer"):
            model.fit([[0.0, 1.0], [0.5, 2.0], [3.0, 0.0]])


# -- pandas -------------------------------------------------------------------------
def test_kmeans_pandas_round_trip(iris):
    frame = pd.DataFrame(iris, columns=["sl", "sw", "pl", "pw"], index=range(10, 160))
    model = jaxmix.KMeans(3, init=iris[[0, 60, 120]]).set_output(transform="pandas")
    distances = model.fit_transform(frame)
    assert list(model.feature_names_in_) == ["sl", "sw", "pl", "pw"]
    assert isinstance(distances, pd.DataFrame)
    assert list(distances.columns) == ["kmeans0", "kmeans1", "kmeans2"]
    assert list(distances.index) == list(frame.index)
    np.testing.assert_allclose(
        distances.to_numpy(),
        np.linalg.norm(iris[:, None] - model.cluster_centers_[None], axis=-1),
        rtol=1e-9,
    )
    np.testing.assert_array_equal(model.predict(frame), model.labels_)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(frame.rename(columns={"sl": "sepal"}))
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(iris)
    median = jaxmix.KMedians(3, init=iris[[0, 60, 120]]).set_output(transform="pandas")
    assert list(median.fit(frame).transform(frame).columns) == [
        "kmedians0",
        "kmedians1",
        "kmedians2",
    ]


def test_mixture_fitted_on_a_dataframe(iris):
    frame = pd.DataFrame(iris, columns=["sl", "sw", "pl", "pw"])
    start = gaussian_start(iris, 3) | FIT
    model = _quiet(jaxmix.GaussianMixture(3, **start).fit, frame)
    assert list(model.feature_names_in_) == list(frame.columns)
    reference = _quiet(jaxmix.GaussianMixture(3, **start).fit, iris)
    np.testing.assert_array_equal(model.means_, reference.means_)
    np.testing.assert_array_equal(model.predict(frame), reference.predict(iris))


# -- input kinds --------------------------------------------------------------------
def _kinds(X):
    """The same data as scikit-learn accepts it, each with its float64 twin."""
    readonly = X.copy()
    readonly.setflags(write=False)
    float16 = X.astype(np.float16)
    integers = np.rint(3 * X).astype(np.int32)
    return {
        "list": (X.tolist(), X),
        "readonly": (readonly, X),
        "strided": (np.repeat(X, 2, axis=0)[::2], X),  # a non-contiguous view
        "fortran": (np.asfortranarray(X), X),
        "dataframe": (pd.DataFrame(X), X),
        "float16": (float16, float16.astype(np.float64)),
        "int32": (integers, integers.astype(np.float64)),
    }


# The settings of the calls above, so that their programs are reused
# (check_estimator covers these input kinds for every estimator, without
# comparing the results).
ESTIMATORS = {
    "GaussianMixture": lambda: jaxmix.GaussianMixture(2, random_state=0),
    "KMeans": lambda: jaxmix.KMeans(3, random_state=0),
}


def _fitted_arrays(model) -> list[np.ndarray]:
    if isinstance(model, jaxmix.KMeans):
        return [model.cluster_centers_]
    return [model.weights_, model.means_, model.covariances_]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_accepts_what_scikit_learn_accepts(name, iris):
    make = ESTIMATORS[name]
    for kind, (data, twin) in _kinds(iris[::3]).items():
        model = _quiet(make().fit, data)
        reference = _quiet(make().fit, twin)
        for a, b in zip(_fitted_arrays(model), _fitted_arrays(reference), strict=True):
            assert a.dtype == np.float64, kind
            np.testing.assert_array_equal(a, b, err_msg=kind)
        np.testing.assert_array_equal(
            model.predict(data), reference.predict(twin), err_msg=kind
        )
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        make().fit(sparse.csr_matrix(iris))


# -- check_estimator, in two worker processes ---------------------------------------
SHARDS = 2  # one process per core; compiling is mostly single-threaded


@pytest.fixture(scope="module", autouse=True)
def _check_runs(request, tmp_path_factory):
    """Start the check_estimator workers with this module's first test.

    They compile while the tests above run here, and ``check_outcomes`` waits
    for them: on two cores, the file takes about its total CPU time halved.
    Only the estimators whose check test is selected are checked.
    """
    names = sorted(
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "function", None) is test_check_estimator
    )
    workdir = tmp_path_factory.mktemp("check_estimator")
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [env.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = "1"
    env["SCIPY_ARRAY_API"] = "1"  # else check_array_api_input is skipped
    runs = []
    for shard in range(SHARDS):
        share = names[shard::SHARDS]
        if not share:
            continue
        report, log = workdir / f"report{shard}.json", workdir / f"log{shard}.txt"
        command = [sys.executable, __file__, str(report), *share]
        with open(log, "w") as output:
            process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        runs.append((process, report, log))
    yield runs
    for process, _, _ in runs:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def check_outcomes(_check_runs) -> dict:
    outcomes = {}
    for process, report, log in _check_runs:
        process.wait(timeout=1200)
        if not report.exists():
            pytest.fail(f"check_estimator did not run:\n{log.read_text()[-6000:]}")
        outcomes.update(json.loads(report.read_text()))
    return outcomes


@pytest.mark.parametrize("name", sorted(checked_estimators()))
def test_check_estimator(check_outcomes, name):
    _, expected = checked_estimators()[name]
    outcome = check_outcomes[name]
    checks = {record["check"]: record for record in outcome["checks"]}
    assert len(checks) > 40, sorted(checks)  # the whole suite ran
    failed = [r for r in outcome["checks"] if r["status"] == "failed"]
    assert not failed, "\n\n".join(f"{r['check']}: {r['message']}" for r in failed)
    # Every listed failure really fails: the list stays short and true.
    for check in expected:
        assert checks[check]["status"] == "xfail", (check, checks[check])
    print(f"{name}: check_estimator in {outcome['seconds']:.1f} s")


if __name__ == "__main__":  # the check_estimator worker: REPORT NAME...
    _run_checks(sys.argv[2:], sys.argv[1])
