r"""Autodiff verification of E-steps and M-steps: "is my derivation right?".

A closed-form M-step claims to maximise the EM objective at fixed
responsibilities r_nk,

.. math::
    Q(θ) = Σ_n Σ_k r_{nk} [\log π_k + \log p(x_n | θ_k)] + \log p(θ),

(the log prior is zero for maximum likelihood) under the constraints of the
parameters. :func:`check_m_step` tests that claim numerically, in float64:

- **stationarity**: the gradient of Q at the returned θ is zero in unconstrained
  coordinates (weights through softmax coordinates, which is the Lagrange
  condition for Σ π_k = 1; covariances through a Cholesky factor with log
  diagonal, so Σ stays symmetric positive definite; variances through their
  logarithm; Bernoulli means through logits; see :mod:`jaxmix.families.charts`).
  Coordinates are scaled by the data's standard deviation, so the gradient
  divided by N is dimensionless; a field fails when ``|∂Q/∂u|/N > rtol``;
- **maximality**: Q does not increase at small random feasible perturbations
  of each field, nor when an L-BFGS maximiser (optax) is started from θ.

Q is differentiated at fixed responsibilities, never through a fit.

Fields that the family fixes (uniform weights, a known variance) are not
checked; an M-step that changes them fails. A returned value that is not
feasible (covariance not positive definite, weights off the simplex, ...) fails
with the reason; to still check the other fields it is replaced, for the rest
of the check, by its value at the E-step's parameters.

``reg_covar`` is not part of the objective: the maximiser of Q is the
unregularised update. The family's own M-step is therefore checked with
``reg_covar = 0``, and a user's M-step that adds a ridge fails with a gap
proportional to the ridge.

Examples:
  >>> import numpy as np, jaxmix.check
  >>> X = np.random.default_rng(0).normal(size=(100, 2))
  >>> def m_step(X, resp):
  ...     counts = resp.sum(0)
  ...     means = resp.T @ X / counts[:, None]
  ...     centred = X[None] - means[:, None]
  ...     covariances = np.einsum("nk,knd,kne->kde", resp, centred, centred)
  ...     return {"weights": counts / len(X), "means": means,
  ...             "covariances": covariances / counts[:, None, None]}
  >>> jaxmix.check.check_m_step(jaxmix.families.Gaussian("full"), X, m_step).ok
  True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmix.engine import em
from jaxmix.families import charts as _coordinates

Array = jax.Array


# --------------------------------------------------------------------------
# Objectives, in unconstrained coordinates (jitted once per family structure)
# --------------------------------------------------------------------------


def _expected_complete_log_likelihood(family, X, resp, coords, base, scale):
    """Q(θ(u)) = Σ r_nk [log π_k + log p(x_n | θ_k)] + log p(θ)."""
    params = _coordinates.to_params(family, coords, base, scale)
    log_prob = em.log_joint(family, params, X)
    weighted = jnp.where(resp > 0, resp * log_prob, 0.0)
    return jnp.sum(weighted) + family.log_prior(params)


def _log_likelihood(family, X, coords, base, scale):
    """log p(X | θ(u)) + log p(θ)."""
    params = _coordinates.to_params(family, coords, base, scale)
    log_prob = em.log_joint(family, params, X)
    return jnp.sum(jax.nn.logsumexp(log_prob, axis=1)) + family.log_prior(params)


@jax.jit
def _fisher_gradients(family, X, resp, params):
    """∇ log p(X|θ) and ∇Q(θ|θ_old) (from ``resp``) at θ = params, in coordinates."""
    scale = _coordinates.data_scale(X)
    coords = _coordinates.to_unconstrained(family, params, scale)
    score = jax.grad(_log_likelihood, argnums=2)(family, X, coords, params, scale)
    gradient = jax.grad(_expected_complete_log_likelihood, argnums=3)(
        family, X, resp, coords, params, scale
    )
    return score, gradient


_e_step = jax.jit(em.e_step, static_argnames=("hard",))
_m_step = jax.jit(em.m_step)
_log_joint = jax.jit(em.log_joint)


class _Examination(NamedTuple):
    coords: dict  # θ in unconstrained coordinates
    objective: Array  # ()  Q(θ) / N
    gradient: dict  # ∂Q/∂u, per free field
    perturbed: dict  # (2P,) Q/N at θ with one field moved by ±size·z
    best: dict  # coordinates of the best point L-BFGS visited
    best_objective: Array  # ()  Q/N there


def _examine(family, X, resp, theta, directions, *, steps):
    """Gradient, perturbations and an L-BFGS run for Q/N around θ, in one program.

    L-BFGS (optax, zoom line search) minimises −Q/N from θ; the best point it
    visits is kept, so a diverging step cannot hide a better one.
    """
    n_samples = X.shape[0]
    scale = _coordinates.data_scale(X)
    coords = _coordinates.to_unconstrained(family, theta, scale)

    def objective(c):
        value = _expected_complete_log_likelihood(family, X, resp, c, theta, scale)
        value = value / n_samples
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    value, gradient = jax.value_and_grad(objective)(coords)
    gradient = jax.tree.map(lambda g: g * n_samples, gradient)

    # One field at a time, each along its directions with both signs: a batch
    # of F·2P points evaluated by one vmapped objective.
    names = list(coords)
    batch = {}
    for name in names:
        c = coords[name]
        z = directions[name]  # (P, ...)
        blocks = [
            jnp.concatenate([c + z, c - z])
            if other == name
            else jnp.broadcast_to(c, (2 * z.shape[0], *c.shape))
            for other in names
        ]
        batch[name] = jnp.concatenate(blocks)
    values = jax.vmap(objective)(batch).reshape(len(names), -1)
    perturbed = {name: values[i] for i, name in enumerate(names)}

    def loss(c):
        return -objective(c)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        current, state, best, best_loss = carry
        current_loss, grad = value_and_grad(current, state=state)
        better = current_loss < best_loss
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), current, best)
        best_loss = jnp.where(better, current_loss, best_loss)
        updates, state = optimizer.update(
            grad, state, current, value=current_loss, grad=grad, value_fn=loss
        )
        return (optax.apply_updates(current, updates), state, best, best_loss), None

    best, best_loss = coords, -value
    if steps > 0:
        start = (coords, optimizer.init(coords), coords, -value)
        (last, _, best, best_loss), _ = jax.lax.scan(step, start, None, length=steps)
        last_loss = loss(last)
        better = last_loss < best_loss
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), last, best)
        best_loss = jnp.minimum(last_loss, best_loss)
    return _Examination(coords, value, gradient, perturbed, best, -best_loss)


_examine_jit = jax.jit(_examine, static_argnames=("steps",))


def _directions(key, params, names, n_perturbations, size):
    """size·z with z ~ N(0, I), (P, *field shape) per free field, drawn on the host.

    (Coordinates have their field's shape. NumPy draws them: a JAX draw would
    compile once per shape.)
    """
    seed = np.asarray(jax.random.key_data(key)).ravel()
    rng = np.random.default_rng(seed)
    return {
        name: size
        * rng.standard_normal((n_perturbations, *np.shape(getattr(params, name))))
        for name in names
    }


@jax.jit
def _responsibilities_by_autodiff(log_prob: Array) -> Array:
    """∂/∂ℓ_nk of Σ_n logsumexp_k ℓ_nk: the posterior over components."""
    return jax.grad(lambda lp: jnp.sum(jax.nn.logsumexp(lp, axis=1)))(log_prob)


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _as_data(X) -> Array:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array (n_samples, n_features), got {X.shape}"
        )
    if X.shape[0] < 1:
        raise ValueError("X must contain at least one sample")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    return jnp.asarray(X)


def _as_float64(params):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype=np.float64)), params)


def _describe(family) -> str:
    """``Name(field=value, ...)`` with the fields that are set (not None)."""
    if not dataclasses.is_dataclass(family):
        return repr(family)
    items = []
    for field in dataclasses.fields(family):
        value = getattr(family, field.name)
        if value is not None:
            items.append(f"{field.name}={np.asarray(value).tolist()!r}")
    return f"{type(family).__name__}({', '.join(items)})"


def _without_ridge(family):
    """The family with reg_covar = 0 (the maximiser of Q is unregularised)."""
    if dataclasses.is_dataclass(family) and any(
        f.name == "reg_covar" for f in dataclasses.fields(family)
    ):
        return dataclasses.replace(family, reg_covar=0.0)
    return family


@functools.partial(jax.jit, static_argnames=("n_components",))
def _random_responsibilities(key, X, *, n_components):
    """Soft assignments to K random samples, by squared distance.

    Sharper than uniform random responsibilities (which make every component
    the same), softer than one-hot ones (which make covariances singular).
    """
    indices = jax.random.choice(key, X.shape[0], (n_components,), replace=False)
    distances = jnp.sum(jnp.square(X[:, None, :] - X[indices][None]), axis=-1)
    spread = jnp.sum(jnp.var(X, axis=0)) + jnp.finfo(X.dtype).tiny
    return jax.nn.softmax(-distances / spread, axis=1)


def _draw_params(family, key, X, n_components):
    if not 1 <= n_components <= X.shape[0]:
        raise ValueError(
            f"n_components must be between 1 and n_samples={X.shape[0]}, "
            f"got {n_components}"
        )
    resp = _random_responsibilities(key, X, n_components=n_components)
    return _m_step(family, X, resp)


def _returned_fields(returned, params) -> dict[str, np.ndarray]:
    """The M-step's output as {field: float64 array}, checked against ``params``."""
    names = params._fields
    if isinstance(returned, Mapping):
        values = dict(returned)
    elif hasattr(returned, "_asdict"):
        values = dict(returned._asdict())
    else:
        values = {
            name: getattr(returned, name) for name in names if hasattr(returned, name)
        }
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"the M-step returned unknown field(s) {unknown}; "
            f"{type(params).__name__} has fields {list(names)}"
        )
    out = {}
    for name, value in values.items():
        value = np.asarray(value, dtype=np.float64)
        expected = np.shape(getattr(params, name))
        if value.shape != expected:
            raise ValueError(
                f"the M-step returned {name} of shape {value.shape}, "
                f"expected {expected}"
            )
        out[name] = value
    return out


# --------------------------------------------------------------------------
# M-step check
# --------------------------------------------------------------------------


class FieldReport(NamedTuple):
    """Outcome of the M-step check for one parameter field."""

    name: str
    ok: bool
    status: str  # "ok", "not stationary", "not a maximum", "infeasible", "fixed",
    #              "changed a fixed field"
    gradient_norm: float  # ‖∂Q/∂u‖ in the checker's coordinates (NaN if unchecked)
    relative_gap: float  # gradient_norm / N
    perturbation_gain: float  # best rise of Q/N over random perturbations of the field
    worst_component: (
        int | None
    )  # component with the largest gradient (if per component)
    gradient: np.ndarray | None  # ∂Q/∂u, the field's coordinate shape
    message: str  # why it failed ("" if ok)


@dataclasses.dataclass(frozen=True)
class MStepReport:
    """Outcome of :func:`check_m_step`; ``str(report)`` explains it.

    Attributes:
      ok: True if every field is stationary and θ is a (local) maximum of Q.
      fields: per-field :class:`FieldReport`, in the params' field order.
      objective: Q(θ)/N at the returned parameters.
      optimizer_gain: how much an L-BFGS maximiser started at θ raised Q/N.
      optimizer_moved: per free field, the RMS coordinate change of that maximiser.
      params: the returned parameters (infeasible fields replaced), in float64.
      n_samples, n_components: the problem's size.
      rtol: tolerance on ``|∂Q/∂u| / N``.
      objective_tol: tolerance on a rise of Q/N (perturbations and optimizer).
      family: ``repr`` of the family that was checked.
    """

    ok: bool
    fields: dict[str, FieldReport]
    objective: float
    optimizer_gain: float
    optimizer_moved: dict[str, float]
    params: Any
    n_samples: int
    n_components: int
    rtol: float
    objective_tol: float
    family: str

    def __getitem__(self, name: str) -> FieldReport:
        return self.fields[name]

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the fields that fail."""
        return tuple(name for name, field in self.fields.items() if not field.ok)

    @property
    def maximality_ok(self) -> bool:
        return bool(self.optimizer_gain <= self.objective_tol)

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [
            f"M-step check {verdict}: {self.family}, N={self.n_samples}, "
            f"K={self.n_components}",
            f"  stationarity: |∂Q/∂u| / N <= {self.rtol:.0e} in unconstrained "
            f"coordinates; maximality: no rise of Q/N above {self.objective_tol:.0e}",
        ]
        width = max(len(name) for name in self.fields)
        for name, field in self.fields.items():
            label = "ok" if field.ok else "FAILED"
            if field.status == "fixed":
                lines.append(f"  {name:<{width}}  fixed by the family (not checked)")
                continue
            gap = (
                f"|∂Q/∂u|/N = {field.relative_gap:.2e}"
                if np.isfinite(field.relative_gap)
                else "|∂Q/∂u|/N not computed"
            )
            text = f"  {name:<{width}}  {label:<6}  {gap}"
            if not field.ok and field.worst_component is not None:
                text += f" (worst component {field.worst_component})"
            if field.message:
                text += f": {field.message}"
            lines.append(text)
        optimizer = f"L-BFGS from θ raises Q/N by {self.optimizer_gain:.2e}"
        if not self.maximality_ok and self.optimizer_moved:
            moved = max(self.optimizer_moved, key=self.optimizer_moved.get)
            optimizer += f", moving {moved} most"
        label = "ok" if self.maximality_ok else "FAILED"
        lines.append(f"  {'maximum':<{width}}  {label:<6}  {optimizer}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def _component_norms(gradient: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.square(gradient.reshape(gradient.shape[0], -1)), axis=1))


def check_m_step(
    family,
    X,
    m_step: Callable | None = None,
    *,
    params=None,
    key=None,
    n_components: int = 3,
    rtol: float = 1e-6,
    objective_tol: float = 1e-10,
    n_perturbations: int = 8,
    perturbation_size: float = 1e-4,
    maximize_steps: int = 100,
) -> MStepReport:
    r"""Check that an M-step maximises the EM objective, by autodiff in float64.

    Draws parameters θ_old (or takes ``params``), computes responsibilities
    r = E-step(θ_old) with the family's E-step, calls ``m_step(X, r)`` and checks
    that the returned θ is a stationary point and a local maximum of

    .. math::
        Q(θ) = Σ_n Σ_k r_{nk} [\log π_k + \log p(x_n | θ_k)] + \log p(θ)

    under the parameters' constraints (see the module docstring). The family's
    own M-step (``m_step=None``) is checked with ``reg_covar = 0``.

    Args:
      family: the model family, e.g. ``jaxmix.families.Gaussian("tied")``.
      X: data, shape (N, D); converted to float64.
      m_step: ``m_step(X, resp) -> params`` with X (N, D) and resp (N, K) as
        float64 NumPy arrays; it returns a mapping (or the family's params, or any
        object with the fields as attributes) with the family's field names, e.g.
        ``{"weights": ..., "means": ..., "covariances": ...}``. Fields that the
        family fixes may be left out. It is called once with concrete arrays,
        never traced, so plain NumPy works. None checks the family's own M-step.
      params: the parameters for the E-step; drawn at random if None.
      key: a JAX PRNG key for drawing params and perturbations (default key 0).
      n_components: K when ``params`` is drawn.
      rtol: tolerance on the relative gradient ``|∂Q/∂u| / N`` per field.
      objective_tol: tolerance on a rise of Q/N found by perturbation or L-BFGS.
      n_perturbations: random directions per field (each tried with both signs).
      perturbation_size: step along each direction, in unconstrained coordinates.
      maximize_steps: L-BFGS iterations (0 skips the optimizer).

    Returns:
      An :class:`MStepReport`: ``report.ok`` and ``str(report)``, which lists every
      field with its relative gradient and names the ones that fail.

    Raises:
      ValueError: if X is not a finite 2-D array, or the M-step returns unknown
        fields, misses a free field, or returns a field of the wrong shape.

    Examples:
      >>> import numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(100, 2))
      >>> report = jaxmix.check.check_m_step(jaxmix.families.Gaussian("diag"), X)
      >>> report.ok
      True
    """
    with jax.enable_x64(True):
        X = _as_data(X)
        if m_step is None:
            family = _without_ridge(family)
        key = jax.random.key(0) if key is None else key
        params_key, perturbation_key = jax.random.split(key)
        if params is None:
            params = _draw_params(family, params_key, X, n_components)
        params = _as_float64(params)
        resp, _ = _e_step(family, params, X)
        if m_step is None:
            returned = _m_step(family, X, resp)
        else:
            returned = m_step(np.array(X), np.array(resp))
        values = _returned_fields(returned, params)
        field_charts = _coordinates.charts(family)

        problems = {}
        candidate = {}
        for name in params._fields:
            old = np.asarray(getattr(params, name))
            if name not in field_charts:
                candidate[name] = old
                if name in values and not np.allclose(
                    values[name], old, rtol=1e-10, atol=0.0
                ):
                    problems[name] = (
                        "changed a fixed field",
                        "the family fixes this field but the M-step changed it",
                    )
                continue
            if name not in values:
                raise ValueError(
                    f"the M-step did not return {name!r}; it must return the free "
                    f"fields {list(field_charts)}"
                )
            reason = field_charts[name].infeasibility(values[name])
            if reason is None:
                candidate[name] = values[name]
            else:
                candidate[name] = old
                problems[name] = ("infeasible", f"infeasible: {reason}")
        theta = type(params)(**{name: jnp.asarray(v) for name, v in candidate.items()})

        n_samples = X.shape[0]
        exam = _examine_jit(
            family,
            X,
            resp,
            theta,
            _directions(
                perturbation_key,
                params,
                list(field_charts),
                n_perturbations,
                perturbation_size,
            ),
            steps=maximize_steps,
        )
        exam = jax.tree.map(np.asarray, exam)
        objective = float(exam.objective)
        gains = {
            name: float(np.max(np.where(np.isfinite(v), v, -np.inf))) - objective
            for name, v in exam.perturbed.items()
        }
        optimizer_gain = max(float(exam.best_objective) - objective, 0.0)
        moved = {
            name: float(np.sqrt(np.mean(np.square(exam.best[name] - c))))
            for name, c in exam.coords.items()
        }
        gradients = exam.gradient

        fields = {}
        for name in params._fields:
            if name not in field_charts:
                status, message = problems.get(name, ("fixed", ""))
                fields[name] = FieldReport(
                    name,
                    status == "fixed",
                    status,
                    np.nan,
                    np.nan,
                    np.nan,
                    None,
                    None,
                    message,
                )
                continue
            gradient = np.asarray(gradients[name])
            norm = float(np.linalg.norm(gradient))
            gap = norm / n_samples
            worst = None
            if field_charts[name].per_component and gradient.ndim >= 1:
                worst = int(np.argmax(_component_norms(gradient)))
            if name in problems:
                status, message = problems[name]
                norm = gap = np.nan
                worst = None
            elif not gap <= rtol:
                status = "not stationary"
                message = f"gradient of Q is not zero ({gap:.2e} > {rtol:.0e})"
            elif gains[name] > objective_tol:
                status = "not a maximum"
                message = (
                    f"a small perturbation raises Q/N by {gains[name]:.2e} "
                    f"(> {objective_tol:.0e})"
                )
            else:
                status, message = "ok", ""
            fields[name] = FieldReport(
                name,
                status == "ok",
                status,
                norm,
                gap,
                gains[name],
                worst,
                gradient,
                message,
            )

        ok = all(f.ok for f in fields.values()) and optimizer_gain <= objective_tol
        return MStepReport(
            ok=bool(ok),
            fields=fields,
            objective=objective,
            optimizer_gain=optimizer_gain,
            optimizer_moved=moved,
            params=jax.tree.map(np.asarray, theta),
            n_samples=n_samples,
            n_components=int(np.shape(params.weights)[0]),
            rtol=rtol,
            objective_tol=objective_tol,
            family=_describe(family),
        )


# --------------------------------------------------------------------------
# E-step check
# --------------------------------------------------------------------------


class EStepReport(NamedTuple):
    """Outcome of :func:`check_e_step`."""

    ok: bool
    max_error: float  # max |r_nk − ∂ log p(X) / ∂ℓ_nk|
    row_sum_error: float  # max |Σ_k r_nk − 1|
    min_resp: float  # smallest responsibility (must be >= 0)
    worst_sample: int  # sample with the largest error
    atol: float

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"E-step check {verdict} (tolerance {self.atol:.0e}):\n"
            f"  max |r_nk − ∂ log p(X)/∂(log π_k + log p(x_n|θ_k))| = "
            f"{self.max_error:.2e} (worst sample {self.worst_sample})\n"
            f"  max |Σ_k r_nk − 1| = {self.row_sum_error:.2e}\n"
            f"  min r_nk = {self.min_resp:.2e}"
        )


def check_e_step(
    family, params, X, e_step: Callable | None = None, *, atol: float = 1e-10
) -> EStepReport:
    r"""Check responsibilities against autodiff of the log-likelihood, in float64.

    The posterior over components is the gradient of the log-likelihood with
    respect to each component's log joint density ℓ_nk = log π_k + log p(x_n|θ_k):

    .. math::
        r_{nk} = \frac{∂}{∂ℓ_{nk}} Σ_n \log Σ_j e^{ℓ_{nj}},

    so rows are non-negative and sum to one.

    Args:
      family: the model family (supplies ℓ_nk).
      params: the family's params.
      X: data, shape (N, D).
      e_step: ``e_step(params, X) -> resp`` (or a tuple whose first item is resp),
        called with float64 NumPy arrays; None checks :func:`jaxmix.e_step`.
      atol: tolerance on every entry and row sum.

    Returns:
      An :class:`EStepReport`.

    Examples:
      >>> import jax, numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(50, 2))
      >>> family = jaxmix.families.Gaussian("full")
      >>> params = jaxmix.initialize(family, jax.random.key(0), X, 2)
      >>> jaxmix.check.check_e_step(family, params, X).ok
      True
    """
    with jax.enable_x64(True):
        X = _as_data(X)
        params = _as_float64(params)
        expected = np.asarray(
            _responsibilities_by_autodiff(_log_joint(family, params, X))
        )
        if e_step is None:
            resp = _e_step(family, params, X)[0]
        else:
            resp = e_step(jax.tree.map(np.array, params), np.array(X))
            if isinstance(resp, tuple):
                resp = resp[0]
        resp = np.asarray(resp, dtype=np.float64)
        if resp.shape != expected.shape:
            raise ValueError(
                f"the E-step returned responsibilities of shape {resp.shape}, "
                f"expected {expected.shape}"
            )
        error = np.abs(resp - expected)
        error = np.where(np.isfinite(error), error, np.inf)
        row_sum_error = np.abs(resp.sum(axis=1) - 1.0)
        row_sum_error = np.where(np.isfinite(row_sum_error), row_sum_error, np.inf)
        max_error = float(error.max())
        min_resp = float(np.nanmin(resp)) if np.any(np.isfinite(resp)) else np.nan
        ok = max_error <= atol and float(row_sum_error.max()) <= atol and min_resp >= 0
        return EStepReport(
            ok=bool(ok),
            max_error=max_error,
            row_sum_error=float(row_sum_error.max()),
            min_resp=min_resp,
            worst_sample=int(np.argmax(error.max(axis=1))),
            atol=atol,
        )


# --------------------------------------------------------------------------
# Fisher's identity
# --------------------------------------------------------------------------


class FisherReport(NamedTuple):
    """Outcome of :func:`check_fisher_identity`."""

    ok: bool
    gaps: dict[str, float]  # per free field: ‖∇ log p(X) − ∇Q‖ / N
    gradient_norms: dict[str, float]  # per free field: ‖∇ log p(X)‖ / N
    rtol: float

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [
            f"Fisher's identity {verdict}: ∇ log p(X|θ) = ∇_θ Q(θ|θ_old) at θ = θ_old "
            f"(tolerance {self.rtol:.0e} on the gap / N)"
        ]
        width = max((len(name) for name in self.gaps), default=0)
        for name, gap in self.gaps.items():
            label = "ok" if gap <= self.rtol else "FAILED"
            lines.append(
                f"  {name:<{width}}  {label:<6}  gap/N = {gap:.2e}  "
                f"(|∇ log p|/N = {self.gradient_norms[name]:.2e})"
            )
        return "\n".join(lines)


def check_fisher_identity(
    family, params, X, e_step: Callable | None = None, *, rtol: float = 1e-8
) -> FisherReport:
    r"""Check Fisher's identity, which ties the E-step to the objective.

    At θ = θ_old the score of the marginal likelihood equals the gradient of the
    EM objective built from θ_old's responsibilities:

    .. math::
        ∇_θ \log p(X | θ) \big|_{θ_{old}} = ∇_θ Q(θ | θ_{old}) \big|_{θ_{old}},

    both taken (with the log prior) in the unconstrained coordinates of
    :func:`check_m_step`. A wrong E-step or a log density inconsistent with the
    responsibilities breaks it.

    Args:
      family: the model family.
      params: θ_old, the family's params.
      X: data, shape (N, D).
      e_step: optional ``e_step(params, X) -> resp`` as in :func:`check_e_step`;
        None uses the family's E-step.
      rtol: tolerance on ``‖∇ log p − ∇Q‖ / N`` per field.

    Returns:
      A :class:`FisherReport`.

    Examples:
      >>> import jax, numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(50, 2))
      >>> family = jaxmix.families.Gaussian("diag")
      >>> params = jaxmix.initialize(family, jax.random.key(0), X, 2)
      >>> jaxmix.check.check_fisher_identity(family, params, X).ok
      True
    """
    with jax.enable_x64(True):
        X = _as_data(X)
        params = _as_float64(params)
        if e_step is None:
            resp = _e_step(family, params, X)[0]
        else:
            resp = e_step(jax.tree.map(np.array, params), np.array(X))
            if isinstance(resp, tuple):
                resp = resp[0]
            resp = jnp.asarray(np.asarray(resp, dtype=np.float64))
        score, gradient = _fisher_gradients(family, X, resp, params)
        n_samples = X.shape[0]
        names = [name for name in params._fields if name in score]
        gaps = {
            name: float(np.linalg.norm(np.asarray(score[name] - gradient[name])))
            / n_samples
            for name in names
        }
        gaps = {name: gap if np.isfinite(gap) else np.inf for name, gap in gaps.items()}
        norms = {
            name: float(np.linalg.norm(np.asarray(score[name]))) / n_samples
            for name in names
        }
        ok = all(gap <= rtol for gap in gaps.values())
        return FisherReport(ok=bool(ok), gaps=gaps, gradient_norms=norms, rtol=rtol)


# --------------------------------------------------------------------------
# Monotonicity
# --------------------------------------------------------------------------


class MonotoneReport(NamedTuple):
    """Outcome of :func:`check_monotone`."""

    ok: bool
    largest_decrease: float  # max over steps of trace[i] − trace[i+1] (0 if none)
    iteration: int  # i where the largest decrease (or the problem) happens; −1 if none
    n_iter: int  # entries checked (the longest run before the NaN padding)
    message: str

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        text = (
            f"monotonicity {verdict}: {self.n_iter} iterations, largest decrease "
            f"{self.largest_decrease:.2e}"
        )
        if self.iteration >= 0:
            text += f" (iteration {self.iteration} → {self.iteration + 1})"
        if self.message:
            text += f": {self.message}"
        return text


def check_monotone(trace, *, rtol: float | None = None) -> MonotoneReport:
    r"""Check that an EM objective trace never decreases beyond round-off.

    EM increases the (MAP) objective at every iteration. ``trace`` is
    :attr:`jaxmix.FitResult.trace` (or the FitResult itself), NaN-padded past
    ``n_iter``; a batch of traces (leading axes, e.g. from ``jax.vmap``) is
    checked row by row. A step from t_i to t_{i+1} fails when
    ``t_i − t_{i+1} > rtol · max(1, |t_i|, |t_{i+1}|)``.

    Args:
      trace: objective per iteration, shape (..., max_iter), or a FitResult.
      rtol: relative round-off allowance; default 100 machine epsilons of the
        trace's dtype.

    Returns:
      A :class:`MonotoneReport` (for a batch, the worst row's).

    Examples:
      >>> import jaxmix.check
      >>> jaxmix.check.check_monotone([-3.0, -2.0, -1.5, float("nan")]).ok
      True
    """
    if isinstance(trace, tuple) and hasattr(trace, "trace"):
        trace = trace.trace  # a FitResult
    trace = np.asarray(trace)
    if not np.issubdtype(trace.dtype, np.floating):
        trace = trace.astype(np.float64)
    if trace.ndim == 0:
        raise ValueError("trace must have at least one dimension (iterations)")
    if rtol is None:
        rtol = 100 * float(np.finfo(trace.dtype).eps)
    rows = trace.reshape(-1, trace.shape[-1]).astype(np.float64)
    reports = [_check_monotone_row(row, rtol) for row in rows]
    failed = [r for r in reports if not r.ok]
    if failed:
        return max(failed, key=lambda r: r.largest_decrease)
    return max(reports, key=lambda r: r.largest_decrease)


def _check_monotone_row(row: np.ndarray, rtol: float) -> MonotoneReport:
    nan = np.isnan(row)
    n_iter = int(np.argmax(nan)) if nan.any() else row.shape[0]
    if not nan[n_iter:].all():
        return MonotoneReport(
            False,
            np.nan,
            n_iter,
            n_iter,
            f"NaN at iteration {n_iter} followed by numbers",
        )
    values = row[:n_iter]
    infinite = ~np.isfinite(values)
    if infinite.any():
        where = int(np.argmax(infinite))
        return MonotoneReport(
            False,
            np.nan,
            where,
            n_iter,
            f"the objective is infinite at iteration {where}",
        )
    if n_iter < 2:
        return MonotoneReport(True, 0.0, -1, n_iter, "")
    decrease = values[:-1] - values[1:]
    allowance = rtol * np.maximum(
        1.0, np.maximum(np.abs(values[:-1]), np.abs(values[1:]))
    )
    worst = int(np.argmax(decrease - allowance))
    largest = float(max(decrease.max(), 0.0))
    if decrease[worst] > allowance[worst]:
        return MonotoneReport(
            False,
            largest,
            worst,
            n_iter,
            f"the objective decreases by {decrease[worst]:.2e} "
            f"(allowance {allowance[worst]:.1e})",
        )
    iteration = int(np.argmax(decrease)) if largest > 0 else -1
    return MonotoneReport(True, largest, iteration, n_iter, "")
