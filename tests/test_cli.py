"""The command line and model files.

Most commands run in-process through ``cli.main`` (a subprocess imports JAX and
compiles again, a few seconds each); a few run end to end in a subprocess. The
data are Old Faithful (272 x 2) and files derived from it, so that the fits
share a few compiled programs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxmix
from jaxmix import GaussianMixture, cli
from jaxmix.datasets import load_faithful
from jaxmix.io import ESTIMATORS, load_model, save_model

X_FAITHFUL, NAMES = load_faithful()


def test_fit_without_arguments_fits_old_faithful(capsys):
    assert cli.main(["fit"]) == 0
    out = capsys.readouterr().out
    for word in (
        "Old Faithful",
        "weights:",
        "means:",
        "covariances:",
        "log-likelihood",
        "iterations:",
        "BIC:",
    ):
        assert word in out
    # the printed model is the estimator's fit with the same settings
    X, _ = load_faithful()
    model = GaussianMixture(2, random_state=0).fit(X)
    assert f"{model.lower_bound_:.6f}" in out
    assert f"BIC: {model.bic(X):.4f}" in out


def test_saved_model_loads_back_exactly(tmp_path, capsys):
    path = tmp_path / "model.npz"
    assert (
        cli.main(
            ["fit", "--covariance", "diag", "--components", "3", "--output", str(path)]
        )
        == 0
    )
    loaded = load_model(path)
    X, _ = load_faithful()
    again = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(again, name))
    assert loaded.get_params() == again.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), again.predict_proba(X))
    # The file itself: a JSON header naming the class and its parameters, and
    # plain arrays (each readable without pickle) equal to the model's
    # attributes; any other entry holds a constructor parameter.
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["__header__"]))
        arrays = {name: data[name] for name in data.files if name != "__header__"}
    assert header["class"] == "GaussianMixture"
    assert header["params"]["n_components"] == 3
    assert header["params"]["covariance_type"] == "diag"
    fitted = {
        name: value
        for name, value in vars(again).items()
        if name.endswith("_") and not name.startswith("_") and name != "family_"
    }
    assert set(fitted) <= set(arrays)
    assert all(name.startswith("params.") for name in set(arrays) - set(fitted))
    for name, value in fitted.items():
        np.testing.assert_array_equal(arrays[name], np.asarray(value), err_msg=name)


def test_round_trip_of_an_estimator(tmp_path):
    X, _ = load_faithful()
    model = GaussianMixture(2, covariance_type="tied", random_state=1).fit(X)
    save_model(tmp_path / "m.npz", model)
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.n_iter_ == model.n_iter_ and loaded.converged_ == model.converged_
    assert loaded.lower_bound_ == model.lower_bound_
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))


def test_csv_with_header_and_npy_files(tmp_path, capsys):
    X, names = load_faithful()
    csv = tmp_path / "data.csv"
    np.savetxt(csv, X, delimiter=",", header=",".join(names), comments="")
    npy = tmp_path / "data.npy"
    np.save(npy, X)
    assert cli.main(["fit", str(csv)]) == 0
    from_csv = capsys.readouterr().out
    assert cli.main(["fit", str(npy)]) == 0
    from_npy = capsys.readouterr().out
    # same numbers, whatever the file type
    assert from_csv.split("weights:")[1] == from_npy.split("weights:")[1]


# -- helpers ------------------------------------------------------------------------
def run(capsys, *args) -> tuple[int, str, str]:
    """``jaxmix ARGS`` in-process: exit code, stdout, stderr."""
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(*args, stdin: bytes | None = None, cwd=None):
    """``jaxmix ARGS`` end to end, in a fresh Python process."""
    return subprocess.run(
        [sys.executable, "-m", "jaxmix.cli", *(str(arg) for arg in args)],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=900,
    )


def write_csv(path, X, names=None, fmt="%.17g"):
    header = ",".join(names) if names else ""
    np.savetxt(path, X, delimiter=",", header=header, comments="", fmt=fmt)
    return path


def parse_csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def csv_column(text: str, name: str) -> np.ndarray:
    header, rows = parse_csv(text)
    return np.array([float(row[header.index(name)]) for row in rows])


def fitted_attributes(model) -> dict:
    return {
        name: value
        for name, value in vars(model).items()
        if name.endswith("_") and not name.startswith("_") and name != "family_"
    }


def assert_same_model(model, reference):
    """Equal parameters and bitwise-equal fitted attributes."""
    assert model.get_params() == reference.get_params()
    ours, theirs = fitted_attributes(model), fitted_attributes(reference)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def api_fit(estimator, X, **fit_kwargs):
    with jaxmix_warnings_silenced():
        return estimator.fit(X, **fit_kwargs)


@contextlib.contextmanager
def jaxmix_warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """The model of plain ``jaxmix fit`` (Old Faithful, K=2), saved."""
    path = tmp_path_factory.mktemp("cli") / "default.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["fit", "--output", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def faithful_sweep():
    """``select_n_components`` on Old Faithful, K = 1..3, key 1, full covariance."""
    with jax.enable_x64(True):
        return jaxmix.select_n_components(
            jaxmix.families.Gaussian(),
            X_FAITHFUL,
            jax.random.key(1),
            3,
            covariance_types=("full",),
        )


# -- plots --------------------------------------------------------------------------
def test_plot_is_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fit.png"
    assert cli.main(["fit", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _axis_labels(svg: str) -> tuple[str, str]:
    """The x and y axis labels of a figure saved as SVG with text kept as text.

    The x label is the lowest horizontal text (below the tick labels), the y
    label the leftmost vertical one.
    """
    import re

    texts = re.findall(
        r'<text [^>]*x="([-\d.]+)" y="([-\d.]+)" transform="rotate\((-?\d+)'
        r"[^>]*>([^<]*)</text>",
        svg,
    )
    horizontal = [(float(y), text) for x, y, angle, text in texts if angle == "-0"]
    vertical = [(float(x), text) for x, y, angle, text in texts if angle == "-90"]
    return max(horizontal)[1], min(vertical)[1]


def test_plot_labels_its_axes_with_the_header(tmp_path, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    headed = write_csv(tmp_path / "d.csv", X_FAITHFUL, ["duration", "wait"])
    np.save(tmp_path / "d.npy", X_FAITHFUL)
    cases = [
        ([headed], ("duration", "wait")),
        ([headed, "--columns", "wait,duration"], ("wait", "duration")),
        ([tmp_path / "d.npy"], ("x0", "x1")),  # no header: the column indices
        ([], ("eruptions", "waiting")),  # the bundled data's names
    ]
    svg = tmp_path / "fit.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for args, expected in cases:
            code, _, err = run(capsys, "fit", *args, "--plot", svg)
            assert code == 0, err
            assert _axis_labels(svg.read_text()) == expected


def test_plot_of_one_feature_is_refused_before_fitting(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    one = write_csv(tmp_path / "one.csv", X_FAITHFUL[:, :1], ["eruptions"])
    code, out, err = run(capsys, "fit", one, "--plot", tmp_path / "p.png")
    assert code == 1
    assert "--plot draws the first two features, but the data has 1" in err
    assert out == "" and not (tmp_path / "p.png").exists()


# -- every model, against the Python API --------------------------------------------
def _binary(X):
    return (X > np.median(X, axis=0)).astype(np.float64)


def _counts(X):
    return np.round(X / [1.0, 10.0])


def _codes(X):
    return np.stack(
        [np.digitize(x, np.quantile(x, [1 / 3, 2 / 3])) for x in X.T], axis=1
    ).astype(np.float64)


# model: (data from Old Faithful, CLI options, estimator parameters, the CSV
# table's column prefix and the attribute it holds)
MODEL_CASES = {
    "gaussian": (
        lambda X: X,
        ["--covariance", "tied", "--reg-covar", "1e-4", "--seed", "1"],
        {"covariance_type": "tied", "reg_covar": 1e-4, "random_state": 1},
        ("mean", "means_"),
    ),
    "student": (
        lambda X: X,
        ["--covariance", "diag", "--dof", "5", "--fixed-dof", "--seed", "3"],
        {"covariance_type": "diag", "dof": 5.0, "learn_dof": False, "random_state": 3},
        ("mean", "means_"),
    ),
    "factor": (
        lambda X: X,
        ["--factors", "1", "--noise", "isotropic", "--seed", "4"],
        {"n_factors": 1, "noise_type": "isotropic", "random_state": 4},
        ("mean", "means_"),
    ),
    "kmeans": (
        lambda X: X,
        ["-k", "3", "--init", "random", "--seed", "2"],
        {"n_clusters": 3, "init": "random", "random_state": 2},
        ("center", "cluster_centers_"),
    ),
    "kmedians": (
        lambda X: X,
        ["--max-iter", "50"],
        {"n_clusters": 2, "max_iter": 50, "random_state": 0},
        ("center", "cluster_centers_"),
    ),
    "bernoulli": (
        _binary,
        ["--mean-prior", "2", "3", "--weight-concentration", "1.5", "--restarts", "2"],
        {
            "mean_prior": (2.0, 3.0),
            "weight_concentration_prior": 1.5,
            "n_init": 2,
            "random_state": 0,
        },
        ("mean", "means_"),
    ),
    "poisson": (
        _counts,
        ["--rate-prior", "2", "0.5", "--uniform-weights"],
        {"rate_prior": (2.0, 0.5), "uniform_weights": True, "random_state": 0},
        ("rate", "rates_"),
    ),
    "categorical": (
        _codes,
        ["--level-prior", "2", "--levels", "4"],
        {"level_prior": 2.0, "n_levels": 4, "random_state": 0},
        ("prob", "probs_"),
    ),
    "gamma": (
        lambda X: X,
        ["--m-step-iter", "5", "--max-iter", "40"],
        {"m_step_iter": 5, "max_iter": 40, "random_state": 0},
        ("mean", "means_"),
    ),
    "vmf": (
        lambda X: X / np.linalg.norm(X, axis=1, keepdims=True),
        ["--uniform-weights"],
        {"uniform_weights": True, "random_state": 0},
        ("direction", "directions_"),
    ),
}


def test_every_estimator_is_a_model_of_the_command_line():
    assert {model.estimator for model in cli.MODELS.values()} == set(ESTIMATORS)


@pytest.mark.parametrize("name", sorted(cli.MODELS))
def test_fit_and_predict_match_the_python_api(name, tmp_path, capsys):
    make_data, options, params, (prefix, attribute) = MODEL_CASES[name]
    spec = cli.MODELS[name]
    X = make_data(X_FAITHFUL)
    data = write_csv(tmp_path / "data.csv", X, ["a", "b"], fmt="%.17g")
    saved = tmp_path / "model.npz"
    args = ["fit", data, "--model", name, "-o", saved, "--format", "csv", *options]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    params = {spec.size: 2, **params}
    reference = api_fit(spec.estimator_class()(**params), X)
    model = load_model(saved)
    assert_same_model(model, reference)

    # the CSV table: one row per component, the fitted values exactly
    header, rows = parse_csv(out)
    table = np.array(rows, dtype=np.float64)
    n_components = getattr(reference, attribute).shape[0]
    assert table.shape[0] == n_components
    np.testing.assert_array_equal(table[:, 0], np.arange(n_components))
    columns = [i for i, column in enumerate(header) if column.startswith(prefix + "[")]
    expected = np.asarray(getattr(reference, attribute)).reshape(n_components, -1)
    np.testing.assert_array_equal(table[:, columns], expected)
    if not spec.hard:
        np.testing.assert_array_equal(
            table[:, header.index("weight")], reference.weights_
        )

    # predict and score with the saved model: the Python API's values exactly
    code, out, err = run(capsys, "predict", saved, data)
    assert code == 0, err
    np.testing.assert_array_equal(csv_column(out, "label"), reference.predict(X))
    code_proba, out_proba, err_proba = run(capsys, "predict", saved, data, "--proba")
    code_score, out_score, err_score = run(capsys, "score", saved, data)
    if spec.hard:
        assert code_proba == 1 and "--proba needs a mixture model" in err_proba
        assert code_score == 1 and "score needs a mixture model" in err_score
        return
    assert code_proba == 0 and code_score == 0
    header, rows = parse_csv(out_proba)
    assert header == [f"component_{k}" for k in range(n_components)]
    np.testing.assert_array_equal(
        np.array(rows, dtype=np.float64), reference.predict_proba(X)
    )
    np.testing.assert_array_equal(
        csv_column(out_score, "log_likelihood"), reference.score_samples(X)
    )


# -- options of fit -----------------------------------------------------------------
def test_restarts_seed_max_iter_and_tol_match_the_python_api(
    tmp_path, capsys, default_model
):
    default = load_model(default_model)
    fitted = {}
    for option, value, param in [
        ("--seed", 2, "random_state"),
        ("--tol", 1e-6, "tol"),
        ("--max-iter", 2, "max_iter"),
        ("--restarts", 3, "n_init"),
    ]:
        path = tmp_path / f"{param}.npz"
        code, _, err = run(capsys, "fit", option, value, "-o", path)
        assert code == 0, err
        model = load_model(path)
        assert model.get_params()[param] == value
        reference = {"random_state": 0, param: value}
        assert_same_model(model, api_fit(GaussianMixture(2, **reference), X_FAITHFUL))
        fitted[param] = model, err
    # what each changes: seed 2 starts the components in the other order ...
    seeded, _ = fitted["random_state"]
    np.testing.assert_allclose(seeded.means_, default.means_[::-1], rtol=1e-4)
    # ... a smaller tolerance runs more iterations to a higher likelihood ...
    tight, _ = fitted["tol"]
    assert tight.n_iter_ > default.n_iter_
    assert tight.lower_bound_ > default.lower_bound_
    # ... max-iter stops the fit, with the estimator's warning on stderr
    stopped, err = fitted["max_iter"]
    assert stopped.n_iter_ == 2 and not stopped.converged_ and default.converged_
    assert "warning: " in err and "did not converge" in err


def test_sample_weights_from_a_column_or_a_file(tmp_path, capsys, default_model):
    weights = np.linspace(0.5, 2.0, X_FAITHFUL.shape[0])
    data = write_csv(
        tmp_path / "w.csv", np.c_[X_FAITHFUL, weights], ["eruptions", "waiting", "w"]
    )
    reference = api_fit(
        GaussianMixture(2, random_state=0), X_FAITHFUL, sample_weight=weights
    )
    assert not np.allclose(reference.means_, load_model(default_model).means_)

    by_column = tmp_path / "by_column.npz"
    code, out, err = run(capsys, "fit", data, "--weight-column", "w", "-o", by_column)
    assert code == 0, err
    assert "sample weights: column 3 ('w')" in out
    assert "BIC" not in out  # the criteria would ignore the weights
    assert_same_model(load_model(by_column), reference)

    np.save(tmp_path / "w.npy", weights)
    by_file = tmp_path / "by_file.npz"
    args = ["--columns", "0,1", "--sample-weight", tmp_path / "w.npy", "-o", by_file]
    code, _, err = run(capsys, "fit", data, *args)
    assert code == 0, err
    assert_same_model(load_model(by_file), reference)

    # the weight column by index, and the table in CSV
    code, out, err = run(capsys, "fit", data, "--weight-column", "2", "--format", "csv")
    assert code == 0, err
    np.testing.assert_array_equal(csv_column(out, "weight"), reference.weights_)

    np.save(tmp_path / "short.npy", weights[:10])
    code, _, err = run(
        capsys,
        "fit",
        data,
        "--columns",
        "0,1",
        "--sample-weight",
        tmp_path / "short.npy",
    )
    assert code == 1
    assert "has 10 weights but" in err and "has 272 samples" in err
    code, _, err = run(
        capsys, "fit", data, "--columns", "w,waiting", "--weight-column", "w"
    )
    assert code == 1 and "includes the weight column" in err


def test_columns_by_name_and_index(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", X_FAITHFUL, NAMES)
    swapped = X_FAITHFUL[:, ::-1]
    reference = api_fit(GaussianMixture(2, random_state=0), swapped)
    saved = tmp_path / "m.npz"
    code, _, err = run(
        capsys, "fit", data, "--columns", "waiting,eruptions", "-o", saved
    )
    assert code == 0, err
    assert_same_model(load_model(saved), reference)
    code, out, err = run(capsys, "predict", saved, data, "--columns", "1,-2")
    assert code == 0, err
    np.testing.assert_array_equal(csv_column(out, "label"), reference.predict(swapped))
    for columns, message in [
        ("height", "has no column 'height'; its columns are eruptions, waiting"),
        ("0,2", "column index 2 is out of range"),
        ("0,0", "chooses a column twice"),
    ]:
        code, _, err = run(capsys, "fit", data, "--columns", columns)
        assert code == 1 and message in err
    np.save(tmp_path / "d.npy", X_FAITHFUL)
    code, _, err = run(capsys, "fit", tmp_path / "d.npy", "--columns", "waiting")
    assert code == 1 and "has no header row" in err


# -- predict, score: data and model files -------------------------------------------
def test_predict_from_standard_input(monkeypatch, capsys, default_model):
    expected = load_model(default_model).predict(X_FAITHFUL)
    buffer = io.BytesIO()
    np.save(buffer, X_FAITHFUL)
    csv_bytes = io.StringIO()
    np.savetxt(csv_bytes, X_FAITHFUL, delimiter=",", fmt="%.17g")
    for content in (buffer.getvalue(), csv_bytes.getvalue().encode()):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content)))
        code, out, err = run(capsys, "predict", default_model, "-")
        assert code == 0, err
        np.testing.assert_array_equal(csv_column(out, "label"), expected)


def test_predict_and_score_write_files(tmp_path, capsys, default_model):
    model = load_model(default_model)
    labels, scores = tmp_path / "labels.csv", tmp_path / "scores.csv"
    data = write_csv(tmp_path / "d.csv", X_FAITHFUL)
    code, out, err = run(capsys, "predict", default_model, data, "-o", labels)
    assert code == 0, err
    assert f"saved to {labels}" in out
    np.testing.assert_array_equal(
        csv_column(labels.read_text(), "label"), model.predict(X_FAITHFUL)
    )
    code, out, err = run(capsys, "score", default_model, data, "-o", scores)
    assert code == 0, err
    np.testing.assert_array_equal(
        csv_column(scores.read_text(), "log_likelihood"),
        model.score_samples(X_FAITHFUL),
    )


def test_feature_count_is_checked_against_the_model(tmp_path, capsys, default_model):
    three = write_csv(tmp_path / "three.csv", np.c_[X_FAITHFUL, X_FAITHFUL[:, :1]])
    for command in ("predict", "score"):
        code, out, err = run(capsys, command, default_model, three)
        assert code == 1 and out == ""
        assert "has 3 feature column(s), but the model" in err
        assert "was fitted to 2" in err


def test_model_files_of_another_format_are_refused(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", X_FAITHFUL)
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    (tmp_path / "text.npz").write_text("not a model\n")
    cases = [
        (tmp_path / "other.npz", "not a jaxmix model file"),
        (tmp_path / "text.npz", "not a jaxmix model file"),
        (tmp_path / "missing.npz", "No such file or directory"),
    ]
    for path, message in cases:
        for command in ("predict", "score"):
            code, out, err = run(capsys, command, path, data)
            assert code == 1 and out == ""
            assert message in err and str(path) in err
            assert "Traceback" not in err
    with pytest.raises(ValueError, match="not a jaxmix model"):
        load_model(tmp_path / "other.npz")


# -- errors ---------------------------------------------------------------------------
def test_bad_input_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,nan\n4,5\n")
    code, _, err = run(capsys, "fit", bad)
    assert code == 1
    assert "line 2, column 2" in err and "NaN" in err
    code, _, err = run(capsys, "fit", tmp_path / "missing.csv")
    assert code == 1 and "missing.csv: No such file or directory" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2\n3,abc\n", "bad.csv: line 2, column 2: 'abc' is not a number"),
        (
            "x,y\n1,2\n\n3,4\n5,oops\n",
            "bad.csv: line 5, column 2 ('y'): 'oops' is not a number",
        ),
        ("x,y\n1,2\n3,\n", "line 3, column 2 ('y'): '' is not a number"),
        ("x,y\n1,2\n3\n", "line 3 has 1 cell(s), but the header has 2"),
        ("x,y\n", "has a header row but no data rows"),
        ("\n\n", "holds no data"),
        ("x,y\n1,inf\n", "line 2, column 2 ('y'): the value inf is NaN or infinite"),
    ],
)
def test_unreadable_csv_names_the_line_and_column(content, message, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code, out, err = run(capsys, "fit", bad)
    assert code == 1 and out == ""
    assert message in err


def test_files_that_are_not_data(tmp_path, capsys):
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "fake.npy").write_text("1,2\n")
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    cases = [
        ("binary.csv", "neither CSV text (UTF-8) nor a .npy array"),
        ("fake.npy", "is not a .npy array"),
        ("strings.npy", "not numbers"),
        ("cube.npy", "expected a non-empty (N, D) or (N,) array"),
    ]
    for name, message in cases:
        code, _, err = run(capsys, "fit", tmp_path / name)
        assert code == 1 and message in err, err
    code, _, err = run(capsys, "fit", tmp_path)  # a directory
    assert code == 1 and str(tmp_path) in err


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--components", "0"],
        ["fit", "--components", "two"],
        ["select", "--components", "3..1"],
        ["select", "--components", "0..2"],
        ["select", "--components", "a..b"],
        ["select", "--components", "1.."],
        ["select", "--components", "0"],
    ],
)
def test_bad_components_are_usage_errors(args, capsys):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert "argument --components/-k" in err
    if args[0] == "select":
        assert "expected K or a range A..B with 1 <= A <= B" in err
    else:
        assert "expected a positive integer" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["fit", "--mean-prior", "2", "2"],
            "--mean-prior does not apply to fit --model gaussian; it applies to "
            "--model bernoulli",
        ),
        (
            ["fit", "--model", "kmeans", "--covariance", "diag"],
            "--covariance does not apply to fit --model kmeans",
        ),
        (
            ["select", "--model", "poisson", "--covariance", "full"],
            "--covariance does not apply to select --model poisson",
        ),
        (["select", "--model", "kmeans"], "invalid choice: 'kmeans'"),
        (["select", "--covariance", "full,bogus"], "expected 'all' or distinct names"),
        (
            ["fit", "--weight-column", "w", "--sample-weight", "w.npy"],
            "not allowed with argument",
        ),
        (["fit", "--tol", "-1"], "expected a finite non-negative number"),
        (["predict", "model.npz"], "the following arguments are required: FILE"),
        (["transform"], "invalid choice: 'transform'"),
    ],
)
def test_usage_errors(args, message, capsys):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert message in err and "usage: jaxmix" in err


def test_bad_option_values_are_reported(capsys):
    code, out, err = run(capsys, "fit", "--weight-concentration", "0.5")
    assert code == 1 and out == ""
    assert "weight_concentration_prior" in err


# -- select ---------------------------------------------------------------------------
def test_select_matches_the_python_api(tmp_path, capsys, faithful_sweep):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "select", "-k", "3", "--seed", "1", "--format", "csv")
    assert code == 0, err
    header, rows = parse_csv(out)
    assert header == [
        "model",
        "n_components",
        "log_likelihood",
        "n_parameters",
        "bic",
        "aic",
        "chosen",
    ]
    assert [row[0] for row in rows] == ["full"] * 3
    table = np.array([row[1:] for row in rows], dtype=np.float64)
    np.testing.assert_array_equal(table[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(table[:, 1], faithful_sweep.log_likelihood[0])
    np.testing.assert_array_equal(table[:, 2], faithful_sweep.n_parameters[0])
    np.testing.assert_array_equal(table[:, 3], faithful_sweep.bic[0])
    np.testing.assert_array_equal(table[:, 4], faithful_sweep.aic[0])
    # the same K, chosen inside the range (not at its end)
    assert faithful_sweep.best_n_components == 2
    np.testing.assert_array_equal(table[:, 5], [0, 1, 0])

    # the text table marks the same row; the plot is written
    plot = tmp_path / "bic.png"
    code, out, err = run(capsys, "select", "-k", "3", "--seed", "1", "--plot", plot)
    assert code == 0, err
    marked = [line.split() for line in out.splitlines() if line.endswith("*")]
    assert len(marked) == 1 and marked[0][:2] == ["full", "2"]
    assert "chosen (lowest BIC): 2 components, full" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # by AIC, and over a range not starting at 1
    for args, scores, first in [
        (["-k", "3", "--criterion", "aic"], faithful_sweep.aic[0], 1),
        (["-k", "2..3"], faithful_sweep.bic[0], 2),
    ]:
        code, out, err = run(capsys, "select", "--seed", "1", *args, "--format", "csv")
        assert code == 0, err
        _, rows = parse_csv(out)
        assert [int(row[1]) for row in rows] == list(range(first, 4))
        chosen = [int(row[1]) for row in rows if row[-1] == "1"]
        assert chosen == [first + int(np.argmin(scores[first - 1 :]))]


# -- end to end, in subprocesses -------------------------------------------------------
def test_fit_predict_and_score_end_to_end(tmp_path):
    # a file made here: the columns swapped, with a header of its own
    X = X_FAITHFUL[:, ::-1]
    data = write_csv(tmp_path / "geyser.csv", X, ["wait", "duration"])
    fit = run_process("fit", "geyser.csv", "-o", "model.npz", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr.decode()
    assert "Gaussian mixture fitted to geyser.csv: 272 samples" in fit.stdout.decode()
    reference = api_fit(GaussianMixture(2, random_state=0), X)
    saved = load_model(tmp_path / "model.npz")
    np.testing.assert_allclose(saved.means_, reference.means_, rtol=1e-10)

    # predict reads the data on standard input
    predict = run_process(
        "predict", "model.npz", "-", stdin=data.read_bytes(), cwd=tmp_path
    )
    assert predict.returncode == 0, predict.stderr.decode()
    labels = csv_column(predict.stdout.decode(), "label")
    np.testing.assert_array_equal(labels, reference.predict(X))
    np.testing.assert_array_equal(labels, saved.predict(X))

    score = run_process("score", "model.npz", "geyser.csv", "-o", "s.csv", cwd=tmp_path)
    assert score.returncode == 0, score.stderr.decode()
    # (another process: the same program, but allow for the last bit)
    np.testing.assert_allclose(
        csv_column((tmp_path / "s.csv").read_text(), "log_likelihood"),
        saved.score_samples(X),
        rtol=1e-12,
    )

    # an error: a message and exit code 1, no traceback
    (tmp_path / "bad.csv").write_text("wait,duration\n80,4.1\n54,two\n")
    bad = run_process("predict", "model.npz", "bad.csv", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == b""
    err = bad.stderr.decode()
    assert "bad.csv: line 3, column 2 ('duration'): 'two' is not a number" in err
    assert "Traceback" not in err


def test_select_end_to_end(faithful_sweep):
    process = run_process("select", "--components", "2..3", "--seed", "1")
    assert process.returncode == 0, process.stderr.decode()
    lines = process.stdout.decode().splitlines()
    rows = [line.split() for line in lines if line.strip().startswith("full")]
    assert [row[1] for row in rows] == ["2", "3"]
    bic = faithful_sweep.bic[0, 1:]
    assert [row[4] for row in rows] == [f"{value:.3f}" for value in bic]
    marked = [row[1] for row in rows if row[-1] == "*"]
    assert marked == [str(2 + int(np.argmin(bic)))]


def test_fit_stream_memory_maps_and_equals_the_in_memory_fit(tmp_path, capsys):
    X = X_FAITHFUL.astype(np.float64)
    np.save(tmp_path / "data.npy", X)
    code, out, err = run(
        capsys,
        "fit",
        tmp_path / "data.npy",
        "--stream",
        "--tol",
        "1e-10",
        "--format",
        "csv",
    )
    assert code == 0, err
    code, reference, err = run(
        capsys, "fit", tmp_path / "data.npy", "--tol", "1e-10", "--format", "csv"
    )
    assert code == 0, err
    streamed = np.array(parse_csv(out)[1], dtype=np.float64)
    in_memory = np.array(parse_csv(reference)[1], dtype=np.float64)
    # Both start from k-means on all 272 rows (the subsample is the whole
    # data; the seeds may differ) and converge to the same optimum.
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6)
    code, _, err = run(
        capsys, "fit", tmp_path / "data.npy", "--stream", "--model", "kmedians"
    )
    assert code == 2 and "--stream does not apply to --model kmedians" in err
    code, _, err = run(capsys, "fit", "--stream")
    assert code == 2 and "--stream reads a .npy file" in err
