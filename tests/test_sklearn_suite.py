"""scikit-learn's own GaussianMixture tests, run against jaxmix.GaussianMixture.

The installed scikit-learn test modules run once, split over subprocesses, with
the plugin ``tests/sklearn_plugin.py``: it points their ``GaussianMixture`` at
jaxmix's and skips, with the reason, the tests that reach scikit-learn's private
API or depend on an intentional difference (its table ``SKIPPED``). The tests
that can turn on the last bit run at XLA's default optimisation level, the
others at level 0, which compiles faster (the plugin's ``DEFAULT_LEVEL``). Each
scikit-learn test function is one test here: it fails if any of its cases
failed, and is skipped (with the plugin's reason) if all of its cases were.
Nothing of scikit-learn's test code is copied: it is imported from the
installed package at test time.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = (
    "sklearn.mixture.tests.test_gaussian_mixture",
    "sklearn.mixture.tests.test_mixture",
)


def _test_functions() -> list[tuple[str, str]]:
    found = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # scikit-learn installed without its tests
            continue
        functions = [
            function
            for function_name, function in inspect.getmembers(
                module, inspect.isfunction
            )
            if function_name.startswith("test_") and function.__module__ == name
        ]
        functions.sort(key=lambda function: function.__code__.co_firstlineno)
        found += [(name, function.__name__) for function in functions]
    return found


FUNCTIONS = _test_functions()
if not FUNCTIONS:
    pytest.skip(
        "scikit-learn's mixture tests are not installed", allow_module_level=True
    )


# The plugin's two parts in parallel, the larger ("rest", at XLA optimisation
# level 0) in two shards by test function: compiling dominates and is mostly
# single-threaded, and three processes (measured: 95 s of CPU for "rounding",
# 190 s and 175 s for the shards of "rest") keep two cores busy.
REST_SHARDS = 2
RUNS = [("rounding", "0/1")] + [
    ("rest", f"{shard}/{REST_SHARDS}") for shard in range(REST_SHARDS)
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[tuple[str, str], list[dict]]:
    """Run the scikit-learn modules once; outcomes per (module, function)."""
    workdir = tmp_path_factory.mktemp("sklearn_suite")
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "sklearn_plugin",
        "-p", "no:cacheprovider", "--rootdir", str(workdir), "--pyargs", *MODULES,
    ]  # fmt: skip
    runs = []
    for run, (part, shard) in enumerate(RUNS):
        report = workdir / f"report{run}.json"
        log = workdir / f"output{run}.txt"
        shard_env = dict(
            env,
            JAXMIX_SKLEARN_REPORT=str(report),
            JAXMIX_SKLEARN_PART=part,
            JAXMIX_SKLEARN_SHARD=shard,
        )
        with open(log, "w") as output:
            process = subprocess.Popen(
                command, cwd=workdir, env=shard_env, stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        runs.append((process, report, log))
    by_function: dict[tuple[str, str], list[dict]] = {}
    try:
        for process, report, log in runs:
            process.wait(timeout=1800)
            if not report.exists():
                pytest.fail(
                    f"scikit-learn's tests did not run:\n{log.read_text()[-6000:]}"
                )
            for record in json.loads(report.read_text())["tests"]:
                key = (record["module"], record["function"])
                by_function.setdefault(key, []).append(record)
    finally:
        for process, _, _ in runs:
            if process.poll() is None:
                process.kill()
    return by_function


@pytest.mark.parametrize(
    ("module", "function"), FUNCTIONS, ids=[function for _, function in FUNCTIONS]
)
def test_sklearn(outcomes, module, function):
    cases = outcomes.get((module, function))
    assert cases, f"{module}::{function} was not collected"
    not_run = [case["name"] for case in cases if case["outcome"] is None]
    assert not not_run, f"cases that did not run: {not_run}"
    failed = [case for case in cases if case["outcome"] == "failed"]
    assert not failed, "\n\n".join(
        f"{case['name']}:\n{case['message']}" for case in failed
    )
    if all(case["outcome"] == "skipped" for case in cases):
        pytest.skip(cases[0]["message"])
