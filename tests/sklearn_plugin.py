"""pytest plugin: scikit-learn's own GaussianMixture tests, run on jaxmix.

``tests/test_sklearn_suite.py`` loads it in a subprocess (so that replacing
scikit-learn's class never leaks into the rest of the suite)::

    PYTHONPATH=tests python -m pytest -p sklearn_plugin --pyargs \
        sklearn.mixture.tests.test_gaussian_mixture sklearn.mixture.tests.test_mixture

The installed test modules are imported unchanged; before they are, this plugin
points ``sklearn.mixture.GaussianMixture`` at ``jaxmix.GaussianMixture``, so
their ``from sklearn.mixture import GaussianMixture`` (and the estimators they
build at import time for ``parametrize``) are jaxmix's. Every collected test
is checked to really see jaxmix's class. The tests that do not test the public
behaviour of ``GaussianMixture`` are skipped with the reason, from the table
``SKIPPED`` below; the report at the end counts them by group.

Each scikit-learn test uses its own data shapes, so most of the run goes into
compiling a new XLA program per shape. By default everything runs as users run
it, at XLA's default optimisation level. ``JAXMIX_SKLEARN_PART`` splits the
run in two, for time: ``"rounding"`` runs only the tests of the table
``DEFAULT_LEVEL`` below, still at the default level; ``"rest"`` runs the
others with ``--xla_backend_optimization_level=0`` (LLVM's code generation,
not XLA's graph optimisations). Measured on this project's 2-core machine,
the whole run takes about 420 s of CPU at level 0 and 550 s at the default
level (+30%, spread over every test: it is all compiling); split this way,
about 465 s. Level 0 can change rounding in the last bit (instruction selection
and reduction order), not the algorithm, so the tests kept at the default
level are those whose assertions can turn on the last bit: objectives
compared with no tolerance, some of them computed by differently batched
programs. The rest compare with a tolerance or across a wide margin (a
converged fit against one iteration), compare results of one compiled program,
or check shapes, dtypes, messages and warnings.

float32 variants run too (``SKLEARN_RUN_FLOAT32_TESTS=1``), and
``JAXMIX_SKLEARN_SHARD="i/n"`` runs every n-th test function (of the part) so
that shards can run in parallel.

Two of scikit-learn's tests (n_parameters, aic_bic) call the private
``_n_parameters()``; jaxmix's estimators define it with the same meaning, so
they run.
"""

from __future__ import annotations

import collections
import json
import os

#: Environment variable: ``"rounding"`` (the ``DEFAULT_LEVEL`` tests), ``"rest"``
#: (the others, at XLA optimisation level 0), or unset (all, default level).
PART_ENV = "JAXMIX_SKLEARN_PART"
PARTS = ("rounding", "rest")

os.environ.setdefault("SKLEARN_RUN_FLOAT32_TESTS", "1")
if os.environ.get(PART_ENV) == "rest":
    # Before JAX creates its CPU client (at the first computation, not import).
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

import pytest  # noqa: E402
import sklearn.mixture  # noqa: E402

import jaxmix  # noqa: E402

sklearn.mixture.GaussianMixture = jaxmix.GaussianMixture

MODULES = (
    "sklearn.mixture.tests.test_gaussian_mixture",
    "sklearn.mixture.tests.test_mixture",
)

#: Environment variable naming a JSON file for the outcome of every test.
REPORT_ENV = "JAXMIX_SKLEARN_REPORT"
#: Environment variable ``"i/n"``: run only every n-th test function, from the i-th.
SHARD_ENV = "JAXMIX_SKLEARN_SHARD"

PRIVATE = "private API"
OTHER = "outside jaxmix"
DIFFERS = "intentional difference"
SLOW = "time budget"

#: Test function (or ``function[parameters]`` for one case) -> (group, reason).
SKIPPED: dict[str, tuple[str, str]] = {
    "test_suffstat_sk_full": (
        PRIVATE,
        "tests scikit-learn's private _estimate_gaussian_covariances_full and "
        "_compute_precision_cholesky; never calls the estimator",
    ),
    "test_suffstat_sk_tied": (
        PRIVATE,
        "tests scikit-learn's private _estimate_gaussian_covariances_tied; never "
        "calls the estimator",
    ),
    "test_suffstat_sk_diag": (
        PRIVATE,
        "tests scikit-learn's private _estimate_gaussian_covariances_diag; never "
        "calls the estimator",
    ),
    "test_gaussian_suffstat_sk_spherical": (
        PRIVATE,
        "tests scikit-learn's private _estimate_gaussian_covariances_spherical; "
        "never calls the estimator",
    ),
    "test_compute_log_det_cholesky": (
        PRIVATE,
        "tests scikit-learn's private _compute_log_det_cholesky; never calls the "
        "estimator",
    ),
    "test_gaussian_mixture_log_probabilities": (
        PRIVATE,
        "tests scikit-learn's private _estimate_log_gaussian_prob; never calls the "
        "estimator",
    ),
    "test_gaussian_mixture_precisions_init": (
        PRIVATE,
        "calls the estimator's private _set_parameters and _initialize",
    ),
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        PRIVATE,
        "counts calls to scikit-learn's private _estimate_gaussian_parameters "
        "through a mock; jaxmix never calls it",
    ),
    "test_gaussian_mixture_array_api_compliance": (
        OTHER,
        "scikit-learn's array API dispatch (array_api_dispatch=True); jaxmix takes "
        "array-likes and computes in JAX",
    ),
    "test_gaussian_mixture_raises_where_array_api_not_implemented": (
        OTHER,
        "scikit-learn's array API dispatch (array_api_dispatch=True)",
    ),
    "test_check_weights": (
        DIFFERS,
        "expects scikit-learn's range message, which prints the minimum as 'max "
        "value' and the maximum as 'min value'; jaxmix prints them the right way "
        "round (its shape and normalisation messages are scikit-learn's)",
    ),
    "test_gaussian_mixture_precisions_init_diag": (
        DIFFERS,
        "builds precisions_init from scikit-learn's KMeans labels (and private "
        "_estimate_gaussian_parameters) and expects the same n_iter_ as jaxmix's "
        "own k-means start; jaxmix's k-means, with its own random stream, numbers "
        "the two clusters the other way round, so the given precisions meet the "
        "other component's means and EM takes one more iteration",
    ),
    "test_init": (
        DIFFERS,
        "asserts lower_bound_ with n_init=10 >= with n_init=1 with no tolerance; "
        "jaxmix fits the 10 restarts as one batched program, whose sums over "
        "samples may round differently from the one-restart program (on a 2-core "
        "AVX2 CPU, random_state=5 gives -2.5063169305081954 against "
        "-2.506316930508195 from the same start); "
        "tests/test_gaussian_mixture.py::test_n_init_keeps_the_best_restart checks "
        "the restart selection to 1e-10",
    ),
    "test_gaussian_mixture_fit_best_params": (
        SLOW,
        "compiles 8 programs (n_init 1 and 10, four covariance types), about 16 s "
        "of CPU; test_multiple_init here and tests/test_gaussian_mixture.py check "
        "that n_init keeps the best restart",
    ),
    "test_gaussian_mixture_fit[float32]": (
        SLOW,
        "the float64 case runs; float32 with n_init=20 compiles 4 more programs "
        "(about 8 s of CPU), and float32 is covered by the other float32 cases",
    ),
}

#: Test functions run at XLA's default optimisation level even when the rest
#: runs at level 0, with what they assert: each compares objectives with no
#: tolerance, so the last bit can decide it. (scikit-learn's fit_predict and
#: predict_proba tests compare labels too, but jaxmix computes both sides with
#: the same compiled program on the same input.)
DEFAULT_LEVEL: dict[str, str] = {
    # Restarts batched 5 wide against one restart alone: a different
    # program, and restart selection that ties up to rounding
    # (jaxmix.engine.batch.select_best).
    "test_multiple_init": "score with n_init=5 >= with n_init=1",
    # EM's monotonicity holds exactly, its rounding does not have to.
    "test_monotonic_likelihood": "each warm-started lower bound >= the previous",
}

_OUTCOMES: dict[str, dict] = {}


def _skip_reason(item) -> tuple[str, str] | None:
    for key in (item.name, item.originalname):
        if key in SKIPPED:
            return SKIPPED[key]
    params = getattr(getattr(item, "callspec", None), "params", {})
    estimator = params.get("estimator")
    if estimator is not None and not isinstance(estimator, jaxmix.GaussianMixture):
        return OTHER, f"{type(estimator).__name__} is scikit-learn's, not jaxmix's"
    return None


def _select(config, items) -> list:
    """Keep the part (``JAXMIX_SKLEARN_PART``), then its shard ``i`` of ``n``.

    Shards (``JAXMIX_SKLEARN_SHARD="i/n"``) split by test function.
    """
    part = os.environ.get(PART_ENV)
    if part is not None and part not in PARTS:
        raise pytest.UsageError(f"{PART_ENV} must be one of {PARTS}, got {part!r}")
    kept = items
    if part is not None:
        rounding = part == "rounding"
        kept = [
            item for item in kept if (item.originalname in DEFAULT_LEVEL) == rounding
        ]
    shard = os.environ.get(SHARD_ENV)
    if shard:
        index, count = (int(value) for value in shard.split("/"))
        functions = list(dict.fromkeys(item.originalname for item in kept))
        keep = {
            name for position, name in enumerate(functions) if position % count == index
        }
        kept = [item for item in kept if item.originalname in keep]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    return kept


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config, items):
    items[:] = _select(config, items)
    for item in items:
        module = getattr(item, "module", None)
        if module is None or module.__name__ not in MODULES:
            continue
        if module.GaussianMixture is not jaxmix.GaussianMixture:
            raise pytest.UsageError(
                f"{module.__name__} was imported before sklearn_plugin replaced "
                "GaussianMixture: it would test scikit-learn's class, not jaxmix's"
            )
        skip = _skip_reason(item)
        group = skip[0] if skip else None
        if skip:
            item.add_marker(pytest.mark.skip(reason=f"[{skip[0]}] {skip[1]}"))
        _OUTCOMES[item.nodeid] = {
            "module": module.__name__,
            "function": item.originalname,
            "name": item.name,
            "group": group,
            "outcome": None,
            "message": "",
        }


def pytest_runtest_logreport(report):
    record = _OUTCOMES.get(report.nodeid)
    if record is None:
        return
    if report.failed:
        record["outcome"] = "failed"
        record["message"] += f"[{report.when}] {report.longreprtext}\n"
    elif report.skipped and record["outcome"] != "failed":
        record["outcome"] = "skipped"
        record["message"] = str(report.longrepr[-1]) if report.longrepr else ""
    elif report.when == "call" and record["outcome"] is None:
        record["outcome"] = "passed"


def _counts() -> dict[str, int]:
    counts = collections.Counter(r["outcome"] or "not run" for r in _OUTCOMES.values())
    for record in _OUTCOMES.values():
        if record["outcome"] == "skipped":
            counts[f"skipped ({record['group'] or 'by scikit-learn'})"] += 1
    return {"collected": len(_OUTCOMES), **counts}


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w") as file:
            json.dump({"counts": _counts(), "tests": list(_OUTCOMES.values())}, file)


def pytest_terminal_summary(terminalreporter):
    counts = ", ".join(f"{key}: {value}" for key, value in _counts().items())
    terminalreporter.write_line(
        f"scikit-learn's tests on jaxmix.GaussianMixture: {counts}"
    )
