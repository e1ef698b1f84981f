"""The command line and model files."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmix import GaussianMixture, cli
from jaxmix.datasets import load_faithful
from jaxmix.io import load_model, save_model


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
    assert np.load(path, allow_pickle=False)  # plain arrays only


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


def test_plot_is_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fit.png"
    assert cli.main(["fit", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,nan\n4,5\n")
    assert cli.main(["fit", str(bad)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert cli.main(["fit", str(tmp_path / "missing.csv")]) == 2
    not_a_model = tmp_path / "x.npz"
    np.savez(not_a_model, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a jaxmix model"):
        load_model(not_a_model)
