r"""Fixed parameters: which entries of the params an M-step holds at their values.

A fit with fixed parameters maximises Q over the free entries only, the fixed
ones staying at their values in the start, bit for bit. Which entries are
fixed is a *mask*: a pytree of the family's params type whose every leaf is a
boolean array of its field's shape (True: fixed). Masks are traced, so a fit
with a new mask of the same structure reuses the compiled program.

:func:`fixed_mask` builds the full mask from a convenient description:

- ``None``: nothing fixed (the fit takes the unconstrained path);
- a collection of field names, e.g. ``{"means"}``: those fields, every entry;
- a mapping (or the params type) ``{field: value}``: per field, ``None`` or
  ``False`` (free), ``True`` (fixed), a (K,) mask of components, broadcast
  over the field's other axes, or a mask of the field's full shape. A field
  without a component axis (a tied covariance) takes a boolean only.

The family says what it can hold fixed exactly (:meth:`Family.check_fixed`)
and computes the constrained maximiser (:meth:`Family.constrained_m_step`):
with some weights fixed, the free weights share the remaining mass

.. math::
    π_k = \Big(1 − Σ_{j \text{ fixed}} π_j\Big)
          \frac{N_k + α_k − 1}{Σ_{j \text{ free}} (N_j + α_j − 1)}

(α = 1 without a Dirichlet prior), and a field whose maximiser does not
depend on the other fields keeps its fixed entries by replacement; families
whose fields are coupled (a Gaussian covariance centred at its mean) override
the M-step.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.families import charts

Array = jax.Array


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _shape(value) -> tuple[int, ...]:
    """The shape of an array, a number or a ``jax.ShapeDtypeStruct``."""
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _field_mask(family, name, value, like, n_components, per_component):
    """The boolean mask of one field, broadcast to the field's shape."""
    shape = _shape(like)
    if value is None or value is False:
        return jnp.zeros(shape, bool)
    if value is True:
        return jnp.ones(shape, bool)
    mask = jnp.asarray(value)
    if _is_concrete(value) and mask.dtype != bool:
        raise ValueError(
            f"the mask of fixed {name!r} must be boolean, got dtype {mask.dtype}"
        )
    mask = mask.astype(bool)
    if mask.shape == shape:
        return mask
    if mask.shape == () and not shape:
        return mask
    if per_component and mask.shape == (n_components,):
        return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    if mask.shape == ():
        return jnp.broadcast_to(mask, shape)
    allowed = f"a boolean, ({n_components},) per component, or {shape}"
    if not per_component:
        allowed = f"a boolean or {shape}"
    raise ValueError(
        f"the mask of fixed {name!r} for {type(family).__name__} must be "
        f"{allowed}; got shape {mask.shape}"
    )


def fixed_mask(family, params, fixed):
    """The full mask of fixed entries: the params type with boolean leaves.

    Args:
      family: the model family.
      params: params of the family, or their ``jax.eval_shape``: they give
        the fields' shapes.
      fixed: None, a collection of field names, or a mapping (or params
        tuple) from field names to None, a boolean, a (K,) mask of components
        or a mask of the field's shape (see the module docstring).

    Returns:
      None if ``fixed`` is None; otherwise ``params``' type with one boolean
      array of its field's shape per field. A concrete mask is checked by the
      family (:meth:`Family.check_fixed`).

    Raises:
      ValueError: an unknown field name, a mask of the wrong shape or dtype,
        or a field the family cannot hold fixed exactly.

    Examples:
      >>> import numpy as np, jaxmix
      >>> from jaxmix.families.fixed import fixed_mask
      >>> family = jaxmix.families.Gaussian("diag")
      >>> params = jaxmix.families.GaussianParams(
      ...     np.full(2, 0.5), np.zeros((2, 3)), np.ones((2, 3)))
      >>> mask = fixed_mask(family, params, {"means": np.array([True, False])})
      >>> mask.means.tolist()
      [[True, True, True], [False, False, False]]
    """
    if fixed is None:
        return None
    names = params._fields
    if hasattr(fixed, "_asdict"):
        given = dict(fixed._asdict())
    elif isinstance(fixed, Mapping):
        given = dict(fixed)
    elif isinstance(fixed, str):
        given = {fixed: True}
    else:
        try:
            given = dict.fromkeys(fixed, True)
        except TypeError:
            raise ValueError(
                "fixed must be None, field names, or a mapping from field names "
                f"to masks; got {type(fixed).__name__}"
            ) from None
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"fixed names unknown field(s) {unknown}; {type(params).__name__} "
            f"has fields {list(names)}"
        )
    n_components = _shape(params.weights)[0]
    field_charts = charts.charts(family)
    masks = {}
    for name in names:
        like = getattr(params, name)
        chart = field_charts.get(name)
        if chart is not None:
            per_component = chart.per_component
        else:
            shape = _shape(like)
            per_component = len(shape) >= 1 and shape[0] == n_components
        masks[name] = _field_mask(
            family, name, given.get(name), like, n_components, per_component
        )
    mask = type(params)(**masks)
    if all(_is_concrete(leaf) for leaf in jax.tree.leaves(mask)):
        family.check_fixed(jax.tree.map(np.asarray, mask))
    return mask


def hold(new_params, params, fixed):
    """``new_params`` with the fixed entries of ``params``, bit for bit."""
    return jax.tree.map(
        lambda mask, old, new: jnp.where(mask, old, new), fixed, params, new_params
    )


def any_fixed(fixed) -> bool:
    """Whether a concrete mask fixes any entry (False for None)."""
    if fixed is None:
        return False
    return any(bool(np.any(np.asarray(leaf))) for leaf in jax.tree.leaves(fixed))


def constant_over(mask: np.ndarray, axes: tuple[int, ...]) -> bool:
    """Whether a concrete mask has one value along ``axes`` (per other index)."""
    mask = np.asarray(mask)
    return bool(np.all(np.all(mask, axis=axes) == np.any(mask, axis=axes)))
