"""The M-step check: is the returned θ a maximiser of Q?"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmix.check import common
from jaxmix.families import charts
from jaxmix.families import fixed as fixing

Array = jax.Array


class _Examination(NamedTuple):
    coords: dict  # θ in unconstrained coordinates
    objective: Array  # ()  Q(θ) / N
    gradient: dict  # ∂Q/∂u, per free field
    perturbed: dict  # (2P,) Q/N at θ with one field moved by ±size·z
    best: dict  # coordinates of the best point L-BFGS visited
    best_objective: Array  # ()  Q/N there


def _examine(family, X, resp, theta, directions, fixed, old, *, steps):
    """Gradient, perturbations and an L-BFGS run for Q/N around θ, in one program.

    L-BFGS (optax, zoom line search) minimises −Q/N from θ; the best point it
    visits is kept, so a diverging step cannot hide a better one. ``fixed``
    (None or a full mask) holds its entries at θ: their coordinates do not
    enter Q, so their gradient is zero. ``old`` is θ_old, under which the
    missing values' expectations in Q(θ | θ_old) are taken.
    """
    n_samples = X.shape[0]
    scale = charts.data_scale(X)
    coords = charts.to_unconstrained(family, theta, scale)

    def objective(c):
        value = common.expected_complete_log_likelihood(
            family, X, resp, c, theta, scale, fixed, old
        )
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


# --------------------------------------------------------------------------
# M-step check
# --------------------------------------------------------------------------


class FieldReport(NamedTuple):
    """Outcome of the M-step check for one parameter field."""

    name: str
    ok: bool
    status: str  # "ok", "not stationary", "not a maximum", "infeasible", "fixed",
    #              "changed a fixed field", "changed a fixed entry"
    gradient_norm: float  # ‖∂Q/∂u‖ in the checker's coordinates (NaN if unchecked)
    relative_gap: float  # gradient_norm / N
    perturbation_gain: float  # best rise of Q/N over random perturbations of the field
    worst_component: (
        int | None
    )  # component with the largest gradient (if per component)
    gradient: np.ndarray | None  # ∂Q/∂u, the field's coordinate shape
    message: str  # why it failed ("" if ok)
    n_fixed: int = 0  # entries held fixed by the ``fixed`` mask


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
            if field.n_fixed:
                size = int(np.size(getattr(self.params, name)))
                text += f" over the free entries ({field.n_fixed} of {size} fixed)"
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


def _directional_slopes(family, X, resp, theta, fixed=None, old=None, step=1e-7):
    r"""One-sided slopes of Q along every coordinate, for a non-smooth Q.

    For each free field, (Q(u ± h e_i) − Q(u)) / h for every coordinate i, as an
    array (2, *field shape) (the + direction first). Q is concave along each
    coordinate for the non-smooth families (an L1 cost), so a secant slope is
    at most the one-sided derivative: every slope is ≤ 0 exactly when zero is a
    subgradient along that coordinate, whatever h, and a positive slope is a
    direction that raises Q.
    """
    scale = charts.data_scale(X)
    coords = charts.to_unconstrained(family, theta, scale)

    def objective(c):
        return common.expected_complete_log_likelihood(
            family, X, resp, c, theta, scale, fixed, old
        )

    base = objective(coords)
    slopes = {}
    for name, value in coords.items():
        eye = jnp.eye(value.size, dtype=value.dtype).reshape(value.size, *value.shape)

        def moved(direction, name=name):
            return objective({**coords, name: coords[name] + direction})

        plus = jax.vmap(moved)(step * eye).reshape(value.shape)
        minus = jax.vmap(moved)(-step * eye).reshape(value.shape)
        slopes[name] = (jnp.stack([plus, minus]) - base) / step
    return slopes


_directional_slopes_jit = jax.jit(_directional_slopes)


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
    fixed=None,
) -> MStepReport:
    r"""Check that an M-step maximises the EM objective, by autodiff in float64.

    Draws parameters θ_old (or takes ``params``), computes responsibilities
    r = E-step(θ_old) with the family's E-step, calls ``m_step(X, r)`` and checks
    that the returned θ is a stationary point and a local maximum of

    .. math::
        Q(θ) = Σ_n Σ_k r_{nk} [\log π_k + \log p(x_n | θ_k)] + \log p(θ)

    under the parameters' constraints (see the module docstring). The family's
    own M-step (``m_step=None``) is checked with ``reg_covar = 0``.

    With ``fixed``, θ must keep the fixed entries of ``params`` and maximise Q
    over the free ones: the gradient is taken in the free entries'
    coordinates, the fixed weights' mass held, so that the free weights live
    on the simplex scaled to the mass the fixed ones leave. The family's own
    M-step is then its constrained M-step (``family.constrained_m_step``).

    Args:
      family: the model family, e.g. ``jaxmix.families.Gaussian("tied")``.
      X: data, shape (N, D); converted to float64.
      m_step: ``m_step(X, resp) -> params`` with X (N, D) and resp (N, K) as
        float64 NumPy arrays; it returns a mapping (or the family's params, or any
        object with the fields as attributes) with the family's field names, e.g.
        ``{"weights": ..., "means": ..., "covariances": ...}``. Fields that the
        family fixes may be left out. It is called once with concrete arrays,
        never traced, so plain NumPy works. None checks the family's own M-step.
        With missing values (a family with ``missing_values=True`` and NaN in
        X) it is called as ``m_step(X, resp, params)`` with θ_old as NumPy
        params, under which the missing entries' expectations are taken, and
        Q is the expected complete-data log-likelihood Q(θ | θ_old).
      params: the parameters for the E-step; drawn at random if None.
      key: a JAX PRNG key for drawing params and perturbations (default key 0).
      n_components: K when ``params`` is drawn.
      rtol: tolerance on the relative gradient ``|∂Q/∂u| / N`` per field.
      objective_tol: tolerance on a rise of Q/N found by perturbation or L-BFGS.
      n_perturbations: random directions per field (each tried with both signs).
      perturbation_size: step along each direction, in unconstrained coordinates.
      maximize_steps: L-BFGS iterations (0 skips the optimizer).
      fixed: entries held at their values in ``params`` (or the drawn
        params): None, field names, or a mapping from field names to a
        boolean, a (K,) mask of components or a mask of the field's shape
        (:func:`jaxmix.families.fixed.fixed_mask`). A field whose M-step
        changes a fixed entry fails (relative tolerance 1e-10).

    Returns:
      An :class:`MStepReport`: ``report.ok`` and ``str(report)``, which lists every
      field with its relative gradient and names the ones that fail.

    Raises:
      ValueError: if X is not a finite 2-D array, or the M-step returns unknown
        fields, misses a free field, or returns a field of the wrong shape;
        or ``fixed`` is not a valid mask for the family.

    Examples:
      >>> import numpy as np, jaxmix
      >>> X = np.random.default_rng(0).normal(size=(100, 2))
      >>> report = jaxmix.check.check_m_step(jaxmix.families.Gaussian("diag"), X)
      >>> report.ok
      True
    """
    with jax.enable_x64(True):
        X = common.as_data(X, allow_nan=family.missing_values)
        family.check_data(np.asarray(X))
        if m_step is None:
            family = common.without_ridge(family)
        key = jax.random.key(0) if key is None else key
        params_key, perturbation_key = jax.random.split(key)
        if params is None:
            params = common.draw_params(family, params_key, X, n_components)
        params = common.as_float64(params)
        mask = fixing.fixed_mask(family, params, fixed)
        resp = common.responsibilities(family, params, X)
        if m_step is None and mask is not None:
            returned = common.m_step_jit(family, X, resp, None, params, mask)
        elif m_step is None and family.missing_values:
            # The missing entries' expectations are taken under θ_old.
            returned = common.m_step_jit(family, X, resp, None, params)
        elif m_step is None:
            returned = common.m_step_jit(family, X, resp)
        elif family.missing_values:
            old = jax.tree.map(np.array, params)
            returned = m_step(np.array(X), np.array(resp), old)
        else:
            returned = m_step(np.array(X), np.array(resp))
        field_charts = charts.charts(family)
        theta, problems = _candidate(
            common.returned_fields(returned, params), params, field_charts, mask
        )
        directions = _directions(
            perturbation_key,
            params,
            list(field_charts),
            n_perturbations,
            perturbation_size,
        )
        exam = _examine_jit(
            family, X, resp, theta, directions, mask, params, steps=maximize_steps
        )
        exam = jax.tree.map(np.asarray, exam)
        if not family.smooth_objective:
            slopes = _directional_slopes_jit(family, X, resp, theta, mask, params)
            exam = exam._replace(gradient=jax.tree.map(np.asarray, slopes))
        fields, optimizer_gain, moved = _field_reports(
            exam,
            params,
            field_charts,
            problems,
            X.shape[0],
            rtol,
            objective_tol,
            smooth=family.smooth_objective,
            mask=mask,
        )
        ok = all(f.ok for f in fields.values()) and optimizer_gain <= objective_tol
        return MStepReport(
            ok=bool(ok),
            fields=fields,
            objective=float(exam.objective),
            optimizer_gain=optimizer_gain,
            optimizer_moved=moved,
            params=jax.tree.map(np.asarray, theta),
            n_samples=X.shape[0],
            n_components=int(np.shape(params.weights)[0]),
            rtol=rtol,
            objective_tol=objective_tol,
            family=common.describe(family),
        )


def _candidate(values, params, field_charts, mask=None):
    """θ to examine: the returned free fields, feasible ones only, and problems.

    A fixed field keeps its value (and is a problem if the M-step changed it);
    an infeasible field is replaced by its value at the E-step's parameters so
    that the other fields can still be checked. Entries fixed by ``mask`` must
    come back unchanged (a problem otherwise) and keep their old values.

    Returns:
      ``(theta, problems)``: params, and ``{field: (status, message)}``.
    """
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
        if mask is not None:
            held = np.asarray(getattr(mask, name))
            value = np.asarray(values[name])
            same = np.isclose(value, old, rtol=1e-10, atol=0.0) | (value == old)
            changed = held & ~same
            if np.any(changed):
                problems[name] = (
                    "changed a fixed entry",
                    f"the M-step changed {int(changed.sum())} fixed entr"
                    f"{'y' if changed.sum() == 1 else 'ies'} (largest change "
                    f"{np.max(np.abs(value - old)[changed]):.3g})",
                )
            candidate[name] = np.where(held, old, candidate[name])
    theta = type(params)(**{name: jnp.asarray(v) for name, v in candidate.items()})
    return theta, problems


def _field_reports(
    exam,
    params,
    field_charts,
    problems,
    n_samples,
    rtol,
    objective_tol,
    *,
    smooth,
    mask=None,
):
    """One FieldReport per params field, the optimizer's gain and its moves.

    For a smooth objective ``exam.gradient`` is ∂Q/∂u and the gap its norm / N;
    otherwise it holds the one-sided slopes of Q along every coordinate
    direction (both signs), and the gap is the largest rise rate / N.
    """
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
        gradient = np.asarray(exam.gradient[name])
        if smooth:
            norm = float(np.linalg.norm(gradient))
            per_component = _component_norms(gradient) if gradient.ndim else None
        else:
            # The steepest one-sided rise along a coordinate; ≤ 0 at a maximum.
            norm = max(float(np.max(gradient)), 0.0)
            per_component = (
                np.max(gradient.reshape(2, gradient.shape[1], -1), axis=(0, 2))
                if gradient.ndim > 1
                else None
            )
        gap = norm / n_samples
        worst = None
        if field_charts[name].per_component and per_component is not None:
            worst = int(np.argmax(per_component))
        if name in problems:
            status, message = problems[name]
            norm = gap = np.nan
            worst = None
        elif not gap <= rtol:
            if smooth:
                status = "not stationary"
                message = f"gradient of Q is not zero ({gap:.2e} > {rtol:.0e})"
            else:
                status = "not a maximum"
                message = (
                    f"Q rises along a coordinate at rate {gap:.2e} per sample "
                    f"(> {rtol:.0e}): no subgradient is zero"
                )
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
            0 if mask is None else int(np.sum(getattr(mask, name))),
        )
    return fields, optimizer_gain, moved
