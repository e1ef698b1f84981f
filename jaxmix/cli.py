"""The ``jaxmix`` command line.

``jaxmix fit`` fits a Gaussian mixture to the bundled Old Faithful data;
``jaxmix fit FILE`` fits a CSV (numeric, an optional header row) or ``.npy`` file.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np


def _load_data(path: str | None) -> tuple[np.ndarray, str]:
    if path is None:
        from jaxmix.datasets import load_faithful

        X, _ = load_faithful()
        return X, "Old Faithful (bundled)"
    if path.endswith(".npy"):
        X = np.load(path, allow_pickle=False)
    else:
        with open(path) as handle:
            first = handle.readline()
        try:
            [float(v) for v in first.strip().split(",") if v.strip()]
            skip = 0
        except ValueError:
            skip = 1  # a header row
        X = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    if X.ndim == 1:
        X = X[:, None]
    return X, path


def _format_matrix(a: np.ndarray, indent: str) -> str:
    text = np.array2string(np.asarray(a), precision=5, suppress_small=True)
    return "\n".join(indent + line for line in text.splitlines())


def _plot(model, X: np.ndarray, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib is an extra
        raise SystemExit(
            f"--plot needs matplotlib (pip install jaxmix[plot]): {error}"
        ) from None
    from jaxmix.plotting import plot_mixture_2d

    fig, ax = plt.subplots(figsize=(6, 4.5))
    plot_mixture_2d(ax, model, X)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fit(args) -> int:
    from jaxmix.estimators.gaussian_mixture import GaussianMixture
    from jaxmix.io import save_model

    X, source = _load_data(args.file)
    model = GaussianMixture(
        n_components=args.components,
        covariance_type=args.covariance,
        n_init=args.restarts,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=args.seed,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X)
    print(
        f"Gaussian mixture fitted to {source}: {X.shape[0]} samples, "
        f"{X.shape[1]} features"
    )
    print(
        f"  components: {args.components}  covariance: {args.covariance}  "
        f"restarts: {args.restarts}  seed: {args.seed}"
    )
    print("weights:")
    print(_format_matrix(model.weights_, "  "))
    print("means:")
    print(_format_matrix(model.means_, "  "))
    print("covariances:")
    print(_format_matrix(model.covariances_, "  "))
    print(f"log-likelihood (mean per sample): {model.lower_bound_:.6f}")
    print(f"iterations: {model.n_iter_}  converged: {model.converged_}")
    print(f"BIC: {model.bic(X):.4f}  AIC: {model.aic(X):.4f}")
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if args.output:
        save_model(args.output, model)
        print(f"model saved to {args.output}")
    if args.plot:
        if X.shape[1] < 2:
            raise SystemExit("--plot needs data with at least 2 features")
        _plot(model, X, args.plot)
        print(f"plot saved to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxmix", description="Mixture models fitted by EM with JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit",
        help="fit a Gaussian mixture",
        description="Fit a Gaussian mixture by EM and print the model. Without "
        "FILE, fits the bundled Old Faithful data.",
    )
    fit.add_argument("file", nargs="?", help="CSV (optional header) or .npy file")
    fit.add_argument("--components", "-k", type=int, default=2, help="K (default 2)")
    fit.add_argument(
        "--covariance",
        default="full",
        choices=["full", "tied", "diag", "spherical"],
        help="covariance type (default full)",
    )
    fit.add_argument("--restarts", type=int, default=1, help="restarts (n_init)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--max-iter", type=int, default=100, help="maximum iterations")
    fit.add_argument("--tol", type=float, default=1e-3, help="convergence tolerance")
    fit.add_argument("--output", "-o", help="save the model to this .npz file")
    fit.add_argument("--plot", help="save a figure of the fit (first 2 features)")
    fit.set_defaults(run=_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"jaxmix: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
