"""The ``jaxmix`` command line: fit, predict, score and select.

``jaxmix fit`` fits a Gaussian mixture to the bundled Old Faithful data;
``jaxmix fit FILE --model NAME`` fits any of jaxmix's estimators (listed in
:data:`MODELS`) to a CSV file (numeric cells, an optional header row), a
``.npy`` array or standard input (``-``), and can save the model;
``jaxmix predict`` and ``jaxmix score`` apply a saved model to new data, and
``jaxmix select`` runs the model-selection sweep over the number of
components.

Exit codes: 0 on success, 2 for a usage error (an unknown option, a malformed
value, an option that does not apply to the chosen model), 1 for an error in
the data or a model file (unreadable, a non-numeric cell, a feature count that
does not match the model, a fit that fails).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
import types
import warnings
from collections.abc import Callable, Mapping

import numpy as np

_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_NOISE_TYPES = ("diag", "tied_diag", "isotropic")
_NPY_MAGIC = b"\x93NUMPY"
_STDIN = "-"


class UsageError(Exception):
    """A command line that cannot be run as given (exit code 2)."""


# -- the models ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Option:
    """A model option: its flag and how ``argparse`` reads it.

    Attributes:
      flag: the option as typed, e.g. ``"--mean-prior"``.
      fit: keyword arguments of ``add_argument`` in ``jaxmix fit``.
      select: those in ``jaxmix select``; None if the sweep does not take it.
      convert: turns the parsed value into the estimator's parameter value.
      prior: whether the option sets a prior (the fit is then MAP).
    """

    flag: str
    fit: Mapping
    select: Mapping | None = None
    convert: Callable = lambda value: value
    prior: bool = False


def _covariance_list(text: str) -> tuple[str, ...]:
    names = _COVARIANCE_TYPES if text == "all" else tuple(text.split(","))
    unknown = [name for name in names if name not in _COVARIANCE_TYPES]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected 'all' or distinct names from {','.join(_COVARIANCE_TYPES)} "
            f"separated by commas, got {text!r}"
        )
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}"
        )
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite non-negative number, got {text!r}"
        )
    return value


def _component_range(text: str) -> tuple[int, int]:
    """``K`` (meaning 1..K) or ``A..B``, 1 ≤ A ≤ B."""
    low, sep, high = text.partition("..")
    try:
        bounds = (int(low), int(high)) if sep else (1, int(text))
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(
            f"expected K or a range A..B with 1 <= A <= B (e.g. 1..10), got {text!r}"
        )
    return bounds


#: Every model option, by key; a model's entry in :data:`MODELS` says which
#: of them it takes and as which constructor parameter.
OPTIONS = types.MappingProxyType(
    {
        "covariance": Option(
            "--covariance",
            {
                "choices": _COVARIANCE_TYPES,
                "help": "covariance type (default full)",
            },
            select={
                "type": _covariance_list,
                "metavar": "TYPES",
                "help": "covariance types compared: 'all' or a list such as "
                "full,diag (default full)",
            },
        ),
        "reg_covar": Option(
            "--reg-covar",
            {
                "type": _non_negative_float,
                "metavar": "R",
                "help": "added to covariance diagonals (default 1e-6)",
            },
            select={
                "type": _non_negative_float,
                "metavar": "R",
                "help": "added to covariance diagonals (default 1e-6)",
            },
        ),
        "init": Option(
            "--init",
            {"metavar": "METHOD", "help": "initialisation (default: the model's own)"},
            select={"metavar": "METHOD", "help": "initialisation method"},
        ),
        "levels": Option(
            "--levels",
            {
                "type": _positive_int,
                "metavar": "L",
                "help": "number of levels of every feature",
            },
            select={
                "type": _positive_int,
                "metavar": "L",
                "help": "number of levels of every feature",
            },
        ),
        "weight_concentration": Option(
            "--weight-concentration",
            {
                "type": float,
                "metavar": "ALPHA",
                "help": "Dirichlet prior on the weights (MAP-EM)",
            },
            prior=True,
        ),
        "mean_prior": Option(
            "--mean-prior",
            {
                "type": float,
                "nargs": 2,
                "metavar": ("A", "B"),
                "help": "Beta(A, B) prior on Bernoulli means",
            },
            convert=tuple,
            prior=True,
        ),
        "rate_prior": Option(
            "--rate-prior",
            {
                "type": float,
                "nargs": 2,
                "metavar": ("A", "B"),
                "help": "Gamma(shape A, rate B) prior on Poisson rates",
            },
            convert=tuple,
            prior=True,
        ),
        "level_prior": Option(
            "--level-prior",
            {
                "type": float,
                "metavar": "BETA",
                "help": "Dirichlet prior on categorical level probabilities",
            },
            prior=True,
        ),
        "uniform_weights": Option(
            "--uniform-weights",
            {"action": "store_true", "default": None, "help": "keep weights at 1/K"},
        ),
        "binarize": Option(
            "--binarize",
            {
                "type": float,
                "metavar": "T",
                "help": "features above T become 1, the others 0",
            },
        ),
        "normalize": Option(
            "--normalize",
            {
                "action": "store_true",
                "default": None,
                "help": "divide every row by its norm (directions on the sphere)",
            },
        ),
        "dof": Option(
            "--dof",
            {
                "type": float,
                "metavar": "NU",
                "help": "degrees of freedom of the t components (the start if learned)",
            },
        ),
        "fixed_dof": Option(
            "--fixed-dof",
            {
                "action": "store_true",
                "default": None,
                "help": "keep the degrees of freedom at --dof instead of learning them",
            },
            convert=lambda value: not value,
        ),
        "factors": Option(
            "--factors",
            {
                "type": _positive_int,
                "metavar": "Q",
                "help": "factors per component (default 1), fewer than the features",
            },
            select={
                "type": _positive_int,
                "metavar": "Q",
                "help": "factors per component (default 1)",
            },
        ),
        "noise": Option(
            "--noise",
            {
                "choices": _NOISE_TYPES,
                "help": "noise of the factor model: diag (per component), tied_diag "
                "(shared) or isotropic (probabilistic PCA); default diag",
            },
            select={
                "choices": _NOISE_TYPES,
                "help": "noise of the factor model (default diag)",
            },
        ),
        "m_step_iter": Option(
            "--m-step-iter",
            {
                "type": _positive_int,
                "metavar": "S",
                "help": "optimiser steps of the generalized M-step per iteration",
            },
        ),
    }
)


def _columns(prefix: str, values: np.ndarray, axes: list) -> list:
    """``(name, (K,) values)`` columns of a per-component array ``(K, ...)``."""
    values = np.asarray(values)
    columns = []
    for index in np.ndindex(values.shape[1:]):
        labels = ",".join(str(axis[i]) for axis, i in zip(axes, index))
        name = f"{prefix}[{labels}]" if labels else prefix
        columns.append((name, values[(slice(None), *index)]))
    return columns


def _gaussian_columns(model, names: list[str]) -> list:
    n_components = model.means_.shape[0]
    covariances = np.asarray(model.covariances_)
    if model.covariance_type == "tied":  # one matrix, shared by every row
        covariances = np.broadcast_to(covariances, (n_components, *covariances.shape))
    shape = {"full": 2, "tied": 2, "diag": 1, "spherical": 0}
    return [
        ("weight", model.weights_),
        *_columns("mean", model.means_, [names]),
        *_columns("covariance", covariances, [names] * shape[model.covariance_type]),
    ]


def _student_columns(model, names: list[str]) -> list:
    columns = [
        (name.replace("covariance", "scale", 1), values)
        for name, values in _gaussian_columns(model, names)
    ]
    return [*columns, ("dof", model.dof_)]


def _clustering_columns(model, names: list[str]) -> list:
    n_clusters = model.cluster_centers_.shape[0]
    return [
        ("n_samples", np.bincount(model.labels_, minlength=n_clusters)),
        *_columns("center", model.cluster_centers_, [names]),
    ]


def _gaussian_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import Gaussian

    family = Gaussian(reg_covar=values.get("reg_covar", 1e-6))
    return family, values.get("covariance", ("full",))


def _student_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import StudentT

    del X
    family = StudentT(reg_covar=values.get("reg_covar", 1e-6))
    return family, values.get("covariance", ("full",))


def _factor_columns(model, names: list[str]) -> list:
    noise = np.asarray(model.noise_variances_)
    n_components, n_features = model.means_.shape
    if model.noise_type == "isotropic":
        noise = np.repeat(noise[:, None], n_features, axis=1)
    elif model.noise_type == "tied_diag":
        noise = np.broadcast_to(noise, (n_components, n_features))
    return [
        ("weight", model.weights_),
        *_columns("mean", model.means_, [names]),
        *_columns("loading", model.loadings_, [names, range(model.n_factors)]),
        *_columns("noise", noise, [names]),
    ]


def _factor_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import FactorAnalyzer

    del X
    family = FactorAnalyzer(
        n_factors=values.get("factors", 1),
        noise_type=values.get("noise", "diag"),
        reg_covar=values.get("reg_covar", 1e-6),
    )
    return family, None


def _bernoulli_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import Bernoulli

    del values, X
    return Bernoulli(), None


def _poisson_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import Poisson

    del values, X
    return Poisson(), None


def _gamma_sweep(values: dict, X: np.ndarray):
    from jaxmix.engine.generalized import GeneralizedMStep
    from jaxmix.families import Gamma

    del X
    steps = values.get("m_step_iter", GeneralizedMStep().steps)
    return Gamma(generalized_m_step=GeneralizedMStep(steps)), None


def _vmf_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import VonMisesFisher

    del values, X
    return VonMisesFisher(), None


def _categorical_sweep(values: dict, X: np.ndarray):
    from jaxmix.families import Categorical

    n_levels = values.get("levels") or max(int(np.max(X)) + 1, 1)
    return Categorical(n_levels=n_levels), None


@dataclasses.dataclass(frozen=True)
class Model:
    """One estimator on the command line (an entry of :data:`MODELS`).

    Attributes:
      title: its name in the printed report.
      estimator: the class's name in the ``jaxmix`` namespace.
      options: the :data:`OPTIONS` it takes, each mapped to its constructor
        parameter.
      printed: ``(heading, attribute)`` of the fitted arrays printed by ``fit``.
      table: the per-component columns of ``fit --format csv``: a function of
        the fitted model and the feature names returning ``(name, (K,))`` pairs.
      size: the constructor parameter set by ``--components``.
      shown: ``(label, parameter)`` always shown in the report's settings line.
      hard: a clustering (no likelihood: no responsibilities, no scores).
      inertia: what ``inertia_`` sums, for a clustering.
      centers: the attribute marked as component centres in ``fit --plot``.
      plot: draws a fitted model on matplotlib axes, ``plot(ax, model, X)``;
        None for the default scatter coloured by component.
      sweep: the family of ``jaxmix select``, ``sweep(option values, X) ->
        (family, covariance_types)``; None if the model has no likelihood.
      sweep_init: the initialisation of ``jaxmix select`` without ``--init``.
    """

    title: str
    estimator: str
    options: Mapping[str, str]
    printed: tuple[tuple[str, str], ...]
    table: Callable
    size: str = "n_components"
    shown: tuple[tuple[str, str], ...] = ()
    hard: bool = False
    inertia: str = ""
    centers: str | None = None
    plot: Callable | None = None
    sweep: Callable | None = None
    sweep_init: str = "kmeans"

    def estimator_class(self):
        import jaxmix

        return getattr(jaxmix, self.estimator)


def _plot_gaussian(ax, model, X) -> None:
    from jaxmix.plotting import plot_mixture_2d

    plot_mixture_2d(ax, model, X)


_MIXTURE_OPTIONS = {
    "init": "init_params",
    "weight_concentration": "weight_concentration_prior",
    "uniform_weights": "uniform_weights",
}

#: The models of ``jaxmix fit --model``, by name. A new estimator is one entry.
MODELS = types.MappingProxyType(
    {
        "gaussian": Model(
            title="Gaussian mixture",
            estimator="GaussianMixture",
            options={
                "covariance": "covariance_type",
                "reg_covar": "reg_covar",
                "init": "init_params",
                "weight_concentration": "weight_concentration_prior",
            },
            printed=(
                ("weights", "weights_"),
                ("means", "means_"),
                ("covariances", "covariances_"),
            ),
            table=_gaussian_columns,
            shown=(("covariance", "covariance_type"),),
            centers="means_",
            plot=_plot_gaussian,
            sweep=_gaussian_sweep,
        ),
        "student": Model(
            title="Student-t mixture",
            estimator="StudentMixture",
            options={
                "covariance": "covariance_type",
                "reg_covar": "reg_covar",
                "init": "init_params",
                "dof": "dof",
                "fixed_dof": "learn_dof",
            },
            printed=(
                ("weights", "weights_"),
                ("means", "means_"),
                ("scale matrices", "covariances_"),
                ("degrees of freedom", "dof_"),
            ),
            table=_student_columns,
            shown=(("covariance", "covariance_type"),),
            centers="means_",
            sweep=_student_sweep,
        ),
        "factor": Model(
            title="mixture of factor analysers",
            estimator="FactorMixture",
            options={
                "factors": "n_factors",
                "noise": "noise_type",
                "reg_covar": "reg_covar",
                "init": "init_params",
            },
            printed=(
                ("weights", "weights_"),
                ("means", "means_"),
                ("loadings", "loadings_"),
                ("noise variances", "noise_variances_"),
            ),
            table=_factor_columns,
            shown=(("factors", "n_factors"), ("noise", "noise_type")),
            centers="means_",
            sweep=_factor_sweep,
        ),
        "kmeans": Model(
            title="K-means",
            estimator="KMeans",
            options={"init": "init"},
            printed=(("centers", "cluster_centers_"),),
            table=_clustering_columns,
            size="n_clusters",
            hard=True,
            inertia="sum of squared distances",
            centers="cluster_centers_",
        ),
        "kmedians": Model(
            title="K-medians",
            estimator="KMedians",
            options={"init": "init"},
            printed=(("centers", "cluster_centers_"),),
            table=_clustering_columns,
            size="n_clusters",
            hard=True,
            inertia="sum of L1 distances",
            centers="cluster_centers_",
        ),
        "bernoulli": Model(
            title="Bernoulli mixture",
            estimator="BernoulliMixture",
            options={
                **_MIXTURE_OPTIONS,
                "mean_prior": "mean_prior",
                "binarize": "binarize",
            },
            printed=(("weights", "weights_"), ("means", "means_")),
            table=lambda model, names: [
                ("weight", model.weights_),
                *_columns("mean", model.means_, [names]),
            ],
            centers="means_",
            sweep=_bernoulli_sweep,
            sweep_init="random",
        ),
        "poisson": Model(
            title="Poisson mixture",
            estimator="PoissonMixture",
            options={**_MIXTURE_OPTIONS, "rate_prior": "rate_prior"},
            printed=(("weights", "weights_"), ("rates", "rates_")),
            table=lambda model, names: [
                ("weight", model.weights_),
                *_columns("rate", model.rates_, [names]),
            ],
            centers="rates_",
            sweep=_poisson_sweep,
        ),
        "categorical": Model(
            title="Categorical mixture",
            estimator="CategoricalMixture",
            options={
                **_MIXTURE_OPTIONS,
                "level_prior": "level_prior",
                "levels": "n_levels",
            },
            printed=(("weights", "weights_"), ("level probabilities", "probs_")),
            table=lambda model, names: [
                ("weight", model.weights_),
                *_columns(
                    "prob",
                    model.probs_,
                    [names, range(model.probs_.shape[2])],
                ),
            ],
            sweep=_categorical_sweep,
            sweep_init="random",
        ),
        "gamma": Model(
            title="Gamma mixture",
            estimator="GammaMixture",
            options={"init": "init_params", "m_step_iter": "m_step_iter"},
            printed=(
                ("weights", "weights_"),
                ("shapes", "shapes_"),
                ("means", "means_"),
            ),
            table=lambda model, names: [
                ("weight", model.weights_),
                *_columns("shape", model.shapes_, [names]),
                *_columns("mean", model.means_, [names]),
            ],
            centers="means_",
            sweep=_gamma_sweep,
        ),
        "vmf": Model(
            title="von Mises-Fisher mixture",
            estimator="VonMisesFisherMixture",
            options={**_MIXTURE_OPTIONS, "normalize": "normalize"},
            printed=(
                ("weights", "weights_"),
                ("directions", "directions_"),
                ("concentrations", "concentrations_"),
            ),
            table=lambda model, names: [
                ("weight", model.weights_),
                *_columns("direction", model.directions_, [names]),
                ("concentration", model.concentrations_),
            ],
            centers="directions_",
            sweep=_vmf_sweep,
        ),
    }
)


def _model_of(estimator) -> Model:
    name = type(estimator).__name__
    for model in MODELS.values():
        if model.estimator == name:
            return model
    raise ValueError(f"the command line has no entry for {name} models")


# -- reading data -------------------------------------------------------------------
@dataclasses.dataclass
class _Table:
    """A data file: numeric values, or the cells of a CSV file."""

    source: str  # the file's name in messages
    n_columns: int
    names: list[str] | None  # from a header row
    values: np.ndarray | None = None  # (N, C), numeric files
    rows: list[list[str]] | None = None  # CSV cells, data rows only
    lines: list[int] | None = None  # the file line of each CSV row

    @property
    def n_rows(self) -> int:
        return len(self.rows) if self.values is None else self.values.shape[0]

    def column_name(self, column: int) -> str:
        name = f" ({self.names[column]!r})" if self.names else ""
        return f"column {column + 1}{name}"

    def where(self, row: int, column: int) -> str:
        if self.lines is None:
            return f"{self.source}: row {row + 1}, {self.column_name(column)}"
        return f"{self.source}: line {self.lines[row]}, {self.column_name(column)}"

    def numeric(self, columns: list[int]) -> np.ndarray:
        """The chosen columns as numbers, (N, len(columns)); all finite."""
        if self.values is not None:
            X = self.values[:, columns]
        else:
            try:
                X = np.array(
                    [[row[c] for c in columns] for row in self.rows], dtype=np.float64
                ).reshape(len(self.rows), len(columns))
            except ValueError:
                self._raise_non_numeric(columns)
        finite = np.isfinite(X)
        if not finite.all():
            row, position = np.argwhere(~finite)[0]
            raise ValueError(
                f"{self.where(row, columns[position])}: the value "
                f"{X[row, position]} is NaN or infinite; jaxmix needs finite numbers"
            )
        return X

    def _raise_non_numeric(self, columns: list[int]):
        for row, cells in enumerate(self.rows):
            for column in columns:
                try:
                    float(cells[column])
                except ValueError:
                    raise ValueError(
                        f"{self.where(row, column)}: {cells[column]!r} is not a number"
                    ) from None
        raise AssertionError("unreachable: every cell converts")  # pragma: no cover

    def column_index(self, choice: str, option: str) -> int:
        """The 0-based index of a column given by name or 0-based index."""
        if self.names is not None and choice in self.names:
            if self.names.count(choice) > 1:
                raise ValueError(
                    f"{option}: the header of {self.source} names {choice!r} twice"
                )
            return self.names.index(choice)
        try:
            index = int(choice)
        except ValueError:
            if self.names is None:
                raise ValueError(
                    f"{option}: {self.source} has no header row, so its columns are "
                    f"chosen by 0-based index, got {choice!r}"
                ) from None
            raise ValueError(
                f"{option}: {self.source} has no column {choice!r}; its columns are "
                f"{', '.join(self.names)}"
            ) from None
        if not -self.n_columns <= index < self.n_columns:
            raise ValueError(
                f"{option}: column index {index} is out of range: {self.source} has "
                f"{self.n_columns} column(s), indexed from 0"
            )
        return index % self.n_columns


def _parse_csv(text: str, source: str) -> _Table:
    """Rows of cells of a CSV text; the first row is a header if no cell is a number."""
    reader = csv.reader(io.StringIO(text))
    rows, lines = [], []
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue  # a blank line
            if cells[0].lstrip().startswith("#"):
                continue  # a comment line
            rows.append([c.strip() for c in cells])
            lines.append(reader.line_num)
    except csv.Error as error:
        raise ValueError(f"{source}: line {reader.line_num}: {error}") from None
    if not rows:
        raise ValueError(f"{source} holds no data (an empty CSV file)")

    def is_number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    names = None
    if not any(is_number(cell) for cell in rows[0]):
        names, rows, lines = rows[0], rows[1:], lines[1:]
        if not rows:
            raise ValueError(f"{source} has a header row but no data rows")
    n_columns = len(names) if names is not None else len(rows[0])
    for cells, line in zip(rows, lines):
        if len(cells) != n_columns:
            first = "the header" if names is not None else "the first row"
            raise ValueError(
                f"{source}: line {line} has {len(cells)} cell(s), but {first} has "
                f"{n_columns}"
            )
    return _Table(source, n_columns, names, rows=rows, lines=lines)


def _array_table(array: np.ndarray, source: str) -> _Table:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{source} holds an array of dtype {array.dtype}, not numbers")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{source} holds an array of shape {array.shape}; expected a non-empty "
            "(N, D) or (N,) array"
        )
    if array.dtype != np.float32:  # float32 is fitted in float32, the rest float64
        array = array.astype(np.float64)
    return _Table(source, array.shape[1], None, values=array)


def _read_table(path: str) -> _Table:
    """A CSV file, a ``.npy`` array, or either on standard input (``-``)."""
    if path == _STDIN:
        source, content = "standard input", sys.stdin.buffer.read()
    else:
        source = path
        with open(path, "rb") as handle:
            content = handle.read()
    if content.startswith(_NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(content), allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ValueError(
                f"{source} is not a readable .npy array: {error}"
            ) from None
        return _array_table(array, source)
    if path.endswith(".npy"):
        raise ValueError(f"{source} is not a .npy array (no NumPy header)")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(
            f"{source} is neither CSV text (UTF-8) nor a .npy array"
        ) from None
    return _parse_csv(text, source)


@dataclasses.dataclass
class _Data:
    X: np.ndarray  # (N, D)
    names: list[str]  # (D,) feature names (x0, x1, ... without a header)
    source: str
    sample_weight: np.ndarray | None = None  # (N,)
    weight_source: str | None = None


def _load_data(args, *, default_bundled: bool = True) -> _Data:
    """The data of a command: its file, ``--columns``, and sample weights."""
    if args.file is None and default_bundled:
        from jaxmix.datasets import load_faithful

        X, names = load_faithful()
        table = _Table("Old Faithful (bundled)", X.shape[1], names, values=X)
    else:
        table = _read_table(args.file)
    weight_column = None
    if getattr(args, "weight_column", None) is not None:
        weight_column = table.column_index(args.weight_column, "--weight-column")
    if args.columns is not None:
        choices = [c.strip() for c in args.columns.split(",")]
        columns = [table.column_index(c, "--columns") for c in choices]
        if len(set(columns)) != len(columns):
            raise ValueError(f"--columns chooses a column twice: {args.columns!r}")
        if weight_column is not None and weight_column in columns:
            weight_name = table.column_name(weight_column)
            raise ValueError(
                f"--columns includes the weight column, {weight_name}; the weights "
                "are not a feature"
            )
    else:
        columns = [c for c in range(table.n_columns) if c != weight_column]
    if not columns:
        raise ValueError(f"{table.source} has no feature column left")
    X = table.numeric(columns)
    names = [table.names[c] if table.names is not None else f"x{c}" for c in columns]
    data = _Data(X, names, table.source)
    if weight_column is not None:
        data.sample_weight = table.numeric([weight_column])[:, 0]
        data.weight_source = table.column_name(weight_column)
    elif getattr(args, "sample_weight", None) is not None:
        if args.sample_weight == _STDIN and args.file == _STDIN:
            raise UsageError("the data and the sample weights cannot both be stdin")
        weights = _read_table(args.sample_weight)
        if weights.n_columns != 1:
            raise ValueError(
                f"--sample-weight: {weights.source} has {weights.n_columns} columns; "
                "expected one weight per line"
            )
        data.sample_weight = weights.numeric([0])[:, 0]
        data.weight_source = weights.source
        if data.sample_weight.shape[0] != X.shape[0]:
            raise ValueError(
                f"--sample-weight: {weights.source} has {weights.n_rows} weights but "
                f"{table.source} has {X.shape[0]} samples"
            )
    return data


# -- output -------------------------------------------------------------------------
def _format_matrix(a: np.ndarray, indent: str) -> str:
    text = np.array2string(np.asarray(a), precision=5, suppress_small=True)
    return "\n".join(indent + line for line in text.splitlines())


def _number(value) -> str:
    """A number as CSV text: exact for float64 and float32, plain for integers."""
    if isinstance(value, (int, np.integer, np.bool_)):
        return str(int(value))
    value = np.asarray(value)
    digits = 9 if value.dtype == np.float32 else 17
    return f"{float(value):.{digits}g}"


def _write_csv(path: str | None, header: list[str], columns: list) -> None:
    """Columns (each a sequence of N values) as CSV, to ``path`` or stdout."""
    handle = sys.stdout if path is None else open(path, "w", newline="")
    try:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in zip(*columns):
            writer.writerow(
                [value if isinstance(value, str) else _number(value) for value in row]
            )
    finally:
        if path is not None:
            handle.close()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib is an extra
        raise ValueError(
            f"--plot needs matplotlib (pip install 'jaxmix[plot]'): {error}"
        ) from None
    return plt


def _save_figure(fig, path: str) -> None:
    plt = _pyplot()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _plot_labels(ax, model, X, centers: str | None) -> None:
    """The first two features coloured by component, centres marked."""
    labels = model.predict(X)
    ax.scatter(X[:, 0], X[:, 1], c=labels % 10, cmap="tab10", vmin=0, vmax=9, s=12)
    if centers is not None:
        location = np.asarray(getattr(model, centers))
        ax.plot(location[:, 0], location[:, 1], "kx", ms=9, mew=2)


def _plot_fit(spec: Model, model, data: _Data, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if spec.plot is not None:
        spec.plot(ax, model, data.X)
    else:
        _plot_labels(ax, model, data.X, spec.centers)
        ax.set_title(f"{spec.title}, {getattr(model, spec.size)} components")
    ax.set_xlabel(data.names[0])
    ax.set_ylabel(data.names[1])
    _save_figure(fig, path)


def _info(args, message: str) -> None:
    """A note for the reader: stdout in text mode, stderr when stdout is CSV."""
    csv_out = getattr(args, "format", "text") == "csv"
    print(message, file=sys.stderr if csv_out else sys.stdout)


# -- jaxmix fit ---------------------------------------------------------------------
def _given_options(args, spec: Model, command: str) -> dict:
    """The model options given on the command line, checked against the model."""
    given = {}
    for key, option in OPTIONS.items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if key not in spec.options or (command == "select" and option.select is None):
            applies = [
                name
                for name, model in MODELS.items()
                if key in model.options and (command == "fit" or model.sweep)
            ]
            where = f"; it applies to --model {', '.join(applies)}" if applies else ""
            raise UsageError(
                f"{option.flag} does not apply to {command} --model {args.model}{where}"
            )
        given[key] = value
    return given


def _check_plot(args, n_features: int) -> None:
    if args.plot is None:
        return
    _pyplot()
    if n_features < 2:
        raise ValueError(
            f"--plot draws the first two features, but the data has {n_features}"
        )


def _load_stream(args, spec: Model) -> _Data:
    """A ``.npy`` file memory-mapped, for ``fit --stream`` (never read whole)."""
    if "device_budget" not in spec.estimator_class()().get_params():
        streamed = [
            name
            for name, model in MODELS.items()
            if "device_budget" in model.estimator_class()().get_params()
        ]
        raise UsageError(
            f"--stream does not apply to --model {args.model}; it applies to "
            f"--model {', '.join(streamed)}"
        )
    if args.file is None or args.file == _STDIN or not args.file.endswith(".npy"):
        raise UsageError("--stream reads a .npy file (memory-mapped), given by name")
    for flag, value in (
        ("--columns", args.columns),
        ("--weight-column", args.weight_column),
        ("--sample-weight", args.sample_weight),
        ("--plot", args.plot),
    ):
        if value is not None:
            raise UsageError(f"{flag} does not apply with --stream")
    try:
        X = np.load(args.file, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"{args.file} is not a readable .npy array: {error}") from None
    if X.ndim != 2 or X.dtype.kind != "f" or X.shape[0] == 0:
        raise ValueError(
            f"{args.file} holds an array of shape {X.shape} and dtype {X.dtype}; "
            "--stream needs a non-empty (N, D) array of floats"
        )
    return _Data(X, [f"x{c}" for c in range(X.shape[1])], args.file)


def _fit(args) -> int:
    spec = MODELS[args.model]
    given = _given_options(args, spec, "fit")
    data = _load_stream(args, spec) if args.stream else _load_data(args)
    _check_plot(args, data.X.shape[1])
    params = {
        spec.size: args.components,
        "n_init": args.restarts,
        "random_state": args.seed,
    }
    if args.stream:
        params["device_budget"] = args.device_budget
    if args.max_iter is not None:
        params["max_iter"] = args.max_iter
    if args.tol is not None:
        params["tol"] = args.tol
    for key, value in given.items():
        params[spec.options[key]] = OPTIONS[key].convert(value)
    model = spec.estimator_class()(**params)
    model.fit(data.X, sample_weight=data.sample_weight)
    if args.format == "csv":
        columns = spec.table(model, data.names)
        n_components = len(columns[0][1])
        _write_csv(
            None,
            ["component", *(name for name, _ in columns)],
            [range(n_components), *(values for _, values in columns)],
        )
    else:
        _print_fit(spec, model, data, given, criteria=not args.stream)
    if args.output:
        from jaxmix.io import save_model

        save_model(args.output, model)
        _info(args, f"model saved to {args.output}")
    if args.plot:
        _plot_fit(spec, model, data, args.plot)
        _info(args, f"plot saved to {args.plot}")
    return 0


def _print_fit(
    spec: Model, model, data: _Data, given: dict, criteria: bool = True
) -> None:
    n_samples, n_features = data.X.shape
    print(
        f"{spec.title} fitted to {data.source}: {n_samples} samples, "
        f"{n_features} features"
    )
    settings = model.get_params()
    size = "clusters" if spec.hard else "components"
    parts = [f"{size}: {settings[spec.size]}"]
    parts += [f"{label}: {settings[name]}" for label, name in spec.shown]
    parts += [f"restarts: {settings['n_init']}", f"seed: {settings['random_state']}"]
    shown = {name for _, name in spec.shown}
    for key, value in given.items():
        if spec.options[key] not in shown:
            value = " ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{OPTIONS[key].flag[2:]}: {value}")
    print("  " + "  ".join(parts))
    if data.sample_weight is not None:
        print(
            f"  sample weights: {data.weight_source} "
            f"(total {data.sample_weight.sum():g})"
        )
    for heading, attribute in spec.printed:
        print(f"{heading}:")
        print(_format_matrix(getattr(model, attribute), "  "))
    if spec.hard:
        print(f"inertia ({spec.inertia}): {model.inertia_:.6f}")
        print(f"iterations: {model.n_iter_}")
        return
    if any(OPTIONS[key].prior for key in given):
        label = "objective (mean log-likelihood + log prior / N)"
    else:
        label = "log-likelihood (mean per sample)"
    print(f"{label}: {model.lower_bound_:.6f}")
    print(f"iterations: {model.n_iter_}  converged: {model.converged_}")
    # The criteria count samples, not weights; a streamed fit's data is not
    # read again for them.
    if data.sample_weight is None and criteria:
        print(f"BIC: {model.bic(data.X):.4f}  AIC: {model.aic(data.X):.4f}")


# -- jaxmix predict, jaxmix score ---------------------------------------------------
def _load_for_data(args):
    """The saved model and the data, their feature counts checked."""
    from jaxmix.io import load_model

    model = load_model(args.model_file)
    spec = _model_of(model)
    data = _load_data(args, default_bundled=False)
    expected = model.n_features_in_
    if data.X.shape[1] != expected:
        raise ValueError(
            f"{data.source} has {data.X.shape[1]} feature column(s), but the model "
            f"in {args.model_file} was fitted to {expected}; choose the columns "
            "with --columns"
        )
    return model, spec, data


def _predict(args) -> int:
    model, spec, data = _load_for_data(args)
    if args.proba:
        if spec.hard:
            raise ValueError(
                f"--proba needs a mixture model: {spec.title} assigns every sample "
                "to one cluster, without responsibilities"
            )
        proba = model.predict_proba(data.X)
        header = [f"component_{k}" for k in range(proba.shape[1])]
        _write_csv(args.output, header, list(proba.T))
        what = "responsibilities"
    else:
        _write_csv(args.output, ["label"], [model.predict(data.X)])
        what = "labels"
    if args.output:
        print(f"{what} of {data.X.shape[0]} samples saved to {args.output}")
    return 0


def _score(args) -> int:
    model, spec, data = _load_for_data(args)
    if spec.hard:
        raise ValueError(f"score needs a mixture model: {spec.title} has no likelihood")
    _write_csv(args.output, ["log_likelihood"], [model.score_samples(data.X)])
    if args.output:
        print(f"log-likelihoods of {data.X.shape[0]} samples saved to {args.output}")
    return 0


# -- jaxmix select ------------------------------------------------------------------
def _select(args) -> int:
    import jax

    import jaxmix

    spec = MODELS[args.model]
    given = _given_options(args, spec, "select")
    low, high = args.components
    data = _load_data(args)
    if args.plot:
        _pyplot()  # before the sweep: a missing matplotlib fails fast
    family, covariance_types = spec.sweep(given, data.X)
    family.check_data(data.X)
    X = data.X
    with jax.enable_x64(X.dtype == np.float64):
        weights = data.sample_weight
        result = jaxmix.select_n_components(
            family,
            X,
            jax.random.key(args.seed),
            high,
            covariance_types=covariance_types,
            n_init=args.restarts,
            method=given.get("init", spec.sweep_init),
            max_iter=100 if args.max_iter is None else args.max_iter,
            tol=1e-3 if args.tol is None else args.tol,
            sample_weight=None if weights is None else weights.astype(X.dtype),
            criterion=args.criterion,
        )
    rows = slice(low - 1, high)
    scores = {"bic": result.bic, "aic": result.aic}[args.criterion][:, rows]
    best_type, best_column = np.unravel_index(int(np.argmin(scores)), scores.shape)
    best_k = int(result.n_components[rows][best_column])
    best_label = result.labels[best_type]
    table = []
    for t, label in enumerate(result.labels):
        for j in range(low - 1, high):
            k = int(result.n_components[j])
            table.append(
                (
                    str(label),
                    k,
                    float(result.log_likelihood[t, j]),
                    int(result.n_parameters[t, j]),
                    float(result.bic[t, j]),
                    float(result.aic[t, j]),
                    t == best_type and k == best_k,
                )
            )
    if args.format == "csv":
        header = ["model", "n_components", "log_likelihood", "n_parameters"]
        header += ["bic", "aic", "chosen"]
        _write_csv(None, header, list(zip(*table)))
    else:
        print(
            f"{spec.title}: model selection on {data.source}: {X.shape[0]} samples, "
            f"{X.shape[1]} features"
        )
        width = max(10, *(len(row[0]) for row in table))
        print(
            f"{'model':>{width}} {'K':>3} {'log-lik':>12} {'params':>6} "
            f"{'BIC':>12} {'AIC':>12}"
        )
        for label, k, log_lik, n_params, bic, aic, chosen in table:
            print(
                f"{label:>{width}} {k:>3} {log_lik:>12.3f} {n_params:>6} "
                f"{bic:>12.3f} {aic:>12.3f} {'*' if chosen else ' '}"
            )
        print(
            f"chosen (lowest {args.criterion.upper()}): {best_k} components, "
            f"{best_label}"
        )
    if args.plot:
        _plot_selection(result, rows, args.criterion, (best_label, best_k), args.plot)
        _info(args, f"plot saved to {args.plot}")
    return 0


def _plot_selection(result, rows, criterion: str, best, path: str) -> None:
    plt = _pyplot()
    values = {"bic": result.bic, "aic": result.aic}[criterion]
    sizes = result.n_components[rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for t, label in enumerate(result.labels):
        ax.plot(sizes, values[t, rows], "o-", label=str(label))
        if label == best[0]:
            ax.plot(best[1], values[t, best[1] - 1], "o", ms=14, mfc="none", mec="k")
    ax.set_xlabel("number of components K")
    ax.set_ylabel(criterion.upper())
    ax.set_xticks(sizes)
    ax.legend(title="model")
    _save_figure(fig, path)


# -- the parser ---------------------------------------------------------------------
def _add_data_options(parser, *, weights: bool) -> None:
    parser.add_argument(
        "--columns",
        metavar="LIST",
        help="the feature columns, by header name or 0-based index, separated by "
        "commas (default: all)",
    )
    if weights:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--weight-column",
            metavar="NAME|INDEX",
            help="take sample weights from this column (not a feature)",
        )
        group.add_argument(
            "--sample-weight",
            metavar="FILE",
            help="sample weights, one per line (CSV) or a .npy array",
        )


def _add_fit_options(parser, command: str) -> None:
    parser.add_argument(
        "--model",
        default="gaussian",
        choices=[
            name for name, model in MODELS.items() if command == "fit" or model.sweep
        ],
        help="the model (default gaussian)",
    )
    for key, option in OPTIONS.items():
        kwargs = option.fit if command == "fit" else option.select
        if kwargs is None:
            continue
        models = [
            name
            for name, model in MODELS.items()
            if key in model.options and (command == "fit" or model.sweep)
        ]
        kwargs = {**kwargs, "help": f"{kwargs['help']} [{', '.join(models)}]"}
        parser.add_argument(option.flag, dest=key, **kwargs)
    parser.add_argument(
        "--restarts",
        type=_positive_int,
        default=1,
        metavar="R",
        help="restarts (n_init)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="random seed (default 0)",
    )
    parser.add_argument(
        "--max-iter",
        type=_non_negative_int,
        metavar="N",
        help="maximum iterations (default: the model's own)",
    )
    parser.add_argument(
        "--tol",
        type=_non_negative_float,
        metavar="TOL",
        help="convergence tolerance (default: the model's own)",
    )
    _add_data_options(parser, weights=True)
    parser.add_argument(
        "--format",
        choices=("text", "csv"),
        default="text",
        help="print a report (text) or a CSV table",
    )


def build_parser() -> argparse.ArgumentParser:
    # One declarative listing of the commands and their arguments, longer than
    # a function should be: split, the command line's shape would be scattered.
    parser = argparse.ArgumentParser(
        prog="jaxmix", description="Mixture models fitted by EM with JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    data_help = "CSV (optional header row) or .npy file; - reads standard input"

    fit = commands.add_parser(
        "fit",
        help="fit a model and print it",
        description="Fit a model by EM (a Gaussian mixture by default) and print "
        "it. Without FILE, fits the bundled Old Faithful data.",
    )
    fit.add_argument("file", nargs="?", help=data_help)
    fit.add_argument(
        "--components",
        "-k",
        type=_positive_int,
        default=2,
        metavar="K",
        help="number of components (clusters) K (default 2)",
    )
    _add_fit_options(fit, "fit")
    fit.add_argument(
        "--output", "-o", metavar="FILE", help="save the model to this .npz file"
    )
    fit.add_argument(
        "--plot", metavar="FILE", help="save a figure of the fit (first 2 features)"
    )
    fit.add_argument(
        "--stream",
        action="store_true",
        help="memory-map the .npy FILE and fit by exact EM over chunks of it "
        "when it is larger than --device-budget (gaussian, bernoulli, kmeans)",
    )
    fit.add_argument(
        "--device-budget",
        type=_non_negative_int,
        default=0,
        metavar="BYTES",
        help="with --stream: data larger than this is streamed (default 0: always)",
    )
    fit.set_defaults(run=_fit)

    predict = commands.add_parser(
        "predict",
        help="labels or responsibilities of new data",
        description="The most probable component of every sample (or, with "
        "--proba, every component's responsibility) under a saved model, as CSV.",
    )
    predict.add_argument("model_file", metavar="MODEL", help="a model saved by fit")
    predict.add_argument("file", metavar="FILE", help=data_help)
    predict.add_argument(
        "--proba", action="store_true", help="responsibilities instead of labels"
    )
    predict.add_argument(
        "--output", "-o", metavar="FILE", help="write the CSV here, not to stdout"
    )
    _add_data_options(predict, weights=False)
    predict.set_defaults(run=_predict)

    score = commands.add_parser(
        "score",
        help="per-sample log-likelihood of new data",
        description="The log-likelihood log p(x) of every sample under a saved "
        "mixture model, as CSV.",
    )
    score.add_argument("model_file", metavar="MODEL", help="a model saved by fit")
    score.add_argument("file", metavar="FILE", help=data_help)
    score.add_argument(
        "--output", "-o", metavar="FILE", help="write the CSV here, not to stdout"
    )
    _add_data_options(score, weights=False)
    score.set_defaults(run=_score)

    select = commands.add_parser(
        "select",
        help="choose the number of components by BIC or AIC",
        description="Fit every number of components in a range (and every "
        "covariance type asked for) in one sweep, and print the BIC/AIC table "
        "with the chosen row marked. Without FILE, uses the bundled Old Faithful "
        "data.",
    )
    select.add_argument("file", nargs="?", help=data_help)
    select.add_argument(
        "--components",
        "-k",
        type=_component_range,
        default=(1, 5),
        metavar="A..B",
        help="the numbers of components compared: A..B, or K for 1..K "
        "(default 1..5); every K up to B is fitted, the choice is among A..B",
    )
    _add_fit_options(select, "select")
    select.add_argument(
        "--criterion",
        choices=("bic", "aic"),
        default="bic",
        help="the criterion that chooses (default bic)",
    )
    select.add_argument(
        "--plot", metavar="FILE", help="save a figure of the criterion against K"
    )
    select.set_defaults(run=_select)
    parser.subcommands = {
        "fit": fit,
        "predict": predict,
        "score": score,
        "select": select,
    }
    return parser


def _message(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        try:
            code = args.run(args)
        except UsageError as error:
            parser.subcommands[args.command].print_usage(sys.stderr)
            print(f"jaxmix {args.command}: error: {error}", file=sys.stderr)
            code = 2
        except (ValueError, OSError) as error:
            print(f"jaxmix: error: {_message(error)}", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            code = 130
    seen = set()
    for warning in caught:
        text = str(warning.message)
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
