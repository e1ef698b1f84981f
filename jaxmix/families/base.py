r"""The family protocol: what a mixture family provides to the engine.

A *family* is an immutable specification of one kind of mixture component (a
Gaussian with a covariance type, a product of Bernoullis, a Poisson, ...) and
its priors. It is a frozen dataclass registered as a pytree: fields declared
with :func:`static` change the compiled program (a covariance type, whether
weights are learned) and are pytree metadata; every other field (``reg_covar``,
prior strengths, fixed variances) is a traced leaf, so new values reuse the
compiled fit. Subclassing :class:`Family` does both the dataclass and the
registration::

    class Poisson(Family):
        params_type = PoissonParams
        rate_prior: Any = None                   # traced
        uniform_weights: bool = static(False)    # static

Params, statistics and results are ``NamedTuple`` pytrees. Params always have a
``weights`` field (K,), the mixing weights.

**Required** (abstract here):

- :meth:`Family.log_component_density`: log p(x_n | θ_k), (N, K);
- :meth:`Family.n_parameters`: free parameters, for BIC and AIC;
- :meth:`Family.charts`: unconstrained coordinates of the free fields, for the
  autodiff checker, gradient fitting and generalized EM
  (:mod:`jaxmix.families.charts`).

**The M-step**, in closed form where there is one:

- :meth:`Family.statistics`: sufficient statistics of (sample-weighted)
  responsibilities, additive over samples;
- :meth:`Family.m_step`: the closed-form (MAP) maximiser from statistics.

A family without them (only a log density, charts and a start from
:meth:`Family.reference`) is fitted by generalized EM
(:mod:`jaxmix.engine.generalized`).

**Optional, with defaults**: :meth:`Family.reference` (a valid params point
for given responsibilities: by default the M-step of statistics taken without
one), :meth:`Family.log_prior` (zero: maximum likelihood),
:meth:`Family.translate` (identity), :meth:`Family.combine_statistics` (sum),
:meth:`Family.empty_statistics` (zeros), :meth:`Family.hard_statistics`
(statistics of one-hot responsibilities),
:meth:`Family.check_data` (accepts everything), the fixed-parameter M-step
(:meth:`Family.constrained_m_step`, :meth:`Family.check_fixed`; see
:mod:`jaxmix.families.fixed`), and the class-level facts
:attr:`Family.location_field`, :attr:`Family.centred_fit`,
:attr:`Family.additive_statistics`, :attr:`Family.soft_assignments`,
:attr:`Family.smooth_objective` and :attr:`Family.fixable_fields`.
Hard-clustering families (K-means, K-medians) also provide
:meth:`Family.assignment_cost` and :meth:`Family.params_at`.

The engine calls these methods and reads these attributes; it never asks what
kind of family it has.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine.generalized import GeneralizedMStep
from jaxmix.families import fixed as fixing
from jaxmix.families import mixing
from jaxmix.families.missing import fill_missing
from jaxmix.families.mixing import update_weights_fixed

Array = jax.Array


def static(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A family field that is static: part of the compiled program, not traced."""
    metadata = {**kwargs.pop("metadata", {}), "static": True}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def one_hot_responsibilities(labels: Array, weights: Array, n_components: int):
    """(N, K) responsibilities, one-hot on ``labels`` and scaled by ``weights``."""
    return jax.nn.one_hot(labels, n_components, dtype=weights.dtype) * weights[:, None]


def _register_pytree(cls) -> None:
    """Registers a family dataclass as a pytree; static fields go in the treedef.

    ``jax.tree_util.register_dataclass`` is not used: in jax 0.10 two dataclass
    treedefs of different classes with equal static fields compare equal, so a
    compiled function could be reused for the wrong family. A custom node's
    treedef compares its registration, i.e. the class, too.
    """
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if not f.metadata.get("static"))
    meta = tuple(f.name for f in fields if f.metadata.get("static"))

    def flatten_with_keys(family):
        children = [(jax.tree_util.GetAttrKey(n), getattr(family, n)) for n in data]
        return children, tuple(getattr(family, n) for n in meta)

    def unflatten(statics, children):
        family = object.__new__(cls)
        for name, value in zip(data + meta, tuple(children) + tuple(statics)):
            object.__setattr__(family, name, value)
        return family

    jax.tree_util.register_pytree_with_keys(
        cls,
        flatten_with_keys,
        unflatten,
        flatten_func=lambda f: (
            [getattr(f, n) for n in data],
            tuple(getattr(f, n) for n in meta),
        ),
    )


class Family(abc.ABC):
    """Base class of every mixture family.

    Every subclass becomes a frozen dataclass registered as a pytree when it is
    defined (fields declared with :func:`static` are static, the others
    traced), overrides the abstract methods, and keeps the defaults of the
    optional ones where they fit.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "closed_form_m_step" not in vars(cls):
            cls.closed_form_m_step = cls.m_step is not Family.m_step
        dataclasses.dataclass(frozen=True)(cls)
        _register_pytree(cls)

    #: The params ``NamedTuple`` type; it has a ``weights`` field (K,).
    params_type: ClassVar[type]
    #: The params field holding the components' locations (K, D), if there is
    #: one: the ``criterion="means"`` stopping rule and the hard-clustering
    #: estimators read it.
    location_field: ClassVar[str | None] = None
    #: Fit in data coordinates centred at the data's (weighted) mean and move
    #: the result back (:meth:`translate`): a location family keeps its
    #: float32 digits on data far from the origin.
    centred_fit: ClassVar[bool] = False
    #: Statistics are sums over samples (or combine associatively through
    #: :meth:`combine_statistics`), so data can be processed in blocks.
    #: False (medians) keeps all samples in one block.
    additive_statistics: ClassVar[bool] = True
    #: Statistics depend on the params only through a centring point, so
    #: statistics taken around one fixed reference at different E-steps can
    #: be averaged (online EM, :mod:`jaxmix.engine.online`). False where they
    #: also hold quantities of the current params' E-step beyond the
    #: responsibilities (Student-t precision weights, factor posteriors).
    online_statistics: ClassVar[bool] = True
    #: The M-step accepts soft responsibilities. False: hard EM only (the
    #: checker then draws one-hot responsibilities).
    soft_assignments: ClassVar[bool] = True
    #: Q is differentiable at its maximiser, so the checker tests a zero
    #: gradient. False (an L1 cost): the checker tests that no coordinate
    #: direction raises Q (a subgradient optimality test).
    smooth_objective: ClassVar[bool] = True
    #: The family defines :meth:`statistics` and :meth:`m_step`. Set when the
    #: class is defined (whether it overrides ``m_step``); False fits it by
    #: generalized EM.
    closed_form_m_step: ClassVar[bool] = True
    #: Options of the generalized M-step (steps, optimiser) for a family
    #: without a closed-form one. A family may declare a static field of this
    #: name to let each instance choose.
    generalized_m_step: ClassVar[GeneralizedMStep] = GeneralizedMStep()
    #: Params fields besides the weights that :meth:`constrained_m_step` can
    #: hold fixed, entry by entry: by default those whose maximiser does not
    #: depend on the other fields (nor couple its own entries), so that
    #: keeping the fixed entries of the unconstrained maximiser is exact.
    fixable_fields: ClassVar[tuple[str, ...]] = ()
    #: NaN entries of X are missing values (MAR): each sample contributes
    #: through its observed features (:meth:`with_missing_values`). Families
    #: that handle missing values declare it as a static field, off by
    #: default, so complete data keeps the program it always had.
    missing_values: ClassVar[bool] = False
    #: Fields that put a prior on the parameters when not None.
    prior_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether the M-step of a component that takes no sample gives finite
    #: parameters whose log density is never NaN (it may be −inf).
    finite_empty_components: ClassVar[bool] = False

    @property
    def masks_components(self) -> bool:
        """Whether masked components make a bigger fit equal to a smaller one.

        True when a fit whose last components have weight exactly zero,
        started by :func:`jaxmix.engine.initialization.initial_params` with
        ``n_active``, equals (to round-off) the fit with only the active
        components, so one compiled program can serve several K. It needs
        finite parameters for a component that takes no sample
        (:attr:`finite_empty_components`), an objective with no term for the
        masked components (none of :attr:`prior_fields` set) and no missing
        values (whose start and statistics differ).
        """
        return (
            self.finite_empty_components
            and not self.missing_values
            and all(getattr(self, name) is None for name in self.prior_fields)
        )

    # -- required ----------------------------------------------------------------
    @abc.abstractmethod
    def log_component_density(self, params, X: Array) -> Array:
        """log p(x_n | θ_k) for every sample and component, shape (N, K)."""

    def statistics(self, params, X: Array, resp: Array):
        """Sufficient statistics of weighted responsibilities ``resp`` (N, K).

        ``params`` is the current point, which the family may use as a centring
        reference; the result must be a pytree that adds up over blocks of
        samples (or combines through :meth:`combine_statistics`). Required with
        :meth:`m_step`; a family without either is fitted by generalized EM.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form M-step, hence no statistics"
        )

    def posterior_statistics(self, params, X: Array, weights: Array):
        """One E-step over a block and its statistics: ``(stats, Σ_n w_n log p(x_n))``.

        The responsibilities at ``params`` times the sample ``weights`` (N,)
        give :meth:`statistics` centred at ``params``. A family whose density
        and statistics share costly work (conditioning on observed features,
        say) overrides this to do that work once per block.
        """
        log_density = self.log_component_density(params, X)
        resp, log_norm = mixing.posterior(log_density, params.weights)
        stats = self.statistics(params, X, resp * weights[:, None])
        return stats, jnp.sum(weights * log_norm)

    def m_step(self, stats, params):
        """The closed-form (MAP) maximiser of Q given the statistics.

        A family that leaves it out is fitted by generalized EM
        (:mod:`jaxmix.engine.generalized`): closed-form weights and a few
        optimiser steps on Q in the coordinates of :meth:`charts`, with the
        options in :attr:`generalized_m_step`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form M-step")

    def reference(self, X: Array, resp: Array):
        """A valid params point for these responsibilities (no params yet).

        The default is the M-step of the statistics taken without a reference
        point, which suits families whose statistics and M-step do not use
        the current params; families that centre their statistics override it.
        A family without a closed-form M-step must override it: its value is
        where the generalized M-step starts (e.g. moment matching). With
        missing values, it is the complete-data reference of X with every
        missing entry replaced by its feature's observed (weighted) mean.
        """
        if self.missing_values:
            filled = fill_missing(X, jnp.sum(resp, axis=1))
            return self.with_missing_values(False).reference(filled, resp)
        if not self.closed_form_m_step:
            raise NotImplementedError(
                f"{type(self).__name__} has no closed-form M-step, so it must "
                "define reference(X, resp), the start of its generalized M-step"
            )
        return self.m_step(self.statistics(None, X, resp), None)

    @abc.abstractmethod
    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, as counted for BIC and AIC."""

    @abc.abstractmethod
    def charts(self) -> Mapping[str, Any]:
        """Unconstrained coordinates of the free params fields, ``{field: chart}``.

        Fields the family fixes (uniform weights, a known variance) are left
        out. Charts are in :mod:`jaxmix.families.charts`.
        """

    # -- optional, with defaults -------------------------------------------------
    def log_prior(self, params) -> Array:
        """Log prior density of the parameters (zero: maximum likelihood)."""
        return jnp.zeros((), params.weights.dtype)

    def translate(self, params, offset: Array):
        """The same model in coordinates moved by ``offset`` (x ↦ x + offset).

        Returns ``(family, params)``. Used when :attr:`centred_fit` is True; the
        default moves the :attr:`location_field`.
        """
        if self.location_field is None:
            return self, params
        moved = getattr(params, self.location_field) + offset
        return self, params._replace(**{self.location_field: moved})

    def combine_statistics(self, a, b):
        """Statistics of two blocks of samples together (default: their sum)."""
        return jax.tree.map(jnp.add, a, b)

    def empty_statistics(self, shapes):
        """The neutral element of :meth:`combine_statistics` (default: zeros).

        ``shapes`` is the statistics' structure of ``jax.ShapeDtypeStruct``.
        """
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def hard_statistics(
        self, params, X: Array, labels: Array, weights: Array, log_joint: Array
    ):
        """:meth:`statistics` of one-hot responsibilities given as labels.

        ``labels`` (N,) is each sample's component, ``weights`` (N,) its sample
        weight, ``log_joint`` (N,) its log joint density under that component.
        Families override it to avoid forming the (N, K) matrix.
        """
        del log_joint
        n_components = params.weights.shape[0]
        resp = one_hot_responsibilities(labels, weights, n_components)
        return self.statistics(params, X, resp)

    def check_fixed(self, fixed) -> None:
        """Raise ``ValueError`` if the M-step cannot hold this mask fixed exactly.

        ``fixed`` is a concrete full mask (:func:`jaxmix.families.fixed.fixed_mask`).
        The default allows the weights, the :attr:`fixable_fields`, and fields
        the family does not learn (absent from :meth:`charts`), for families
        with a closed-form M-step. Families whose masks must follow a pattern
        (a covariance matrix fixed as a whole) extend it.
        """
        fixed_fields = [name for name in fixed._fields if np.any(getattr(fixed, name))]
        if fixed_fields and not self.closed_form_m_step:
            raise ValueError(
                f"{type(self).__name__} has no closed-form M-step; fixed "
                f"parameters ({fixed_fields}) need one"
            )
        learned = set(self.charts())
        allowed = {"weights", *self.fixable_fields}
        for name in fixed_fields:
            if name in learned and name not in allowed:
                raise ValueError(
                    f"{type(self).__name__} cannot hold {name!r} fixed exactly: "
                    f"its maximiser is coupled to the other fields; it can fix "
                    f"{sorted(allowed & learned)}"
                )

    def constrained_m_step(self, stats, params, fixed):
        r"""The (MAP) maximiser of Q over the free entries; fixed ones kept.

        ``fixed`` is a full mask (:mod:`jaxmix.families.fixed`) and ``params``
        the current point, which holds the fixed values. The default is exact
        for the fields :meth:`check_fixed` allows: the unconstrained
        :meth:`m_step` with the fixed entries of ``params`` put back (bit for
        bit), the free weights sharing the mass the fixed ones leave
        (:meth:`hold_fixed`). Families whose fields are coupled override it.
        """
        return self.hold_fixed(self.m_step(stats, params), params, fixed)

    def hold_fixed(self, new_params, params, fixed):
        """``new_params`` with the fixed entries of ``params`` put back.

        Fixed entries are ``params``' own, bit for bit. If the family learns
        the weights, the free ones share the mass the fixed ones leave
        (:func:`jaxmix.families.mixing.update_weights_fixed`), which is the
        constrained maximiser because every family's weight update is
        proportional to the (prior-shifted) counts.
        """
        held = fixing.hold(new_params, params, fixed)
        if "weights" not in self.charts():
            return held
        weights = update_weights_fixed(
            new_params.weights, params.weights, fixed.weights
        )
        return held._replace(weights=weights)

    def with_missing_values(self, missing_values: bool = True):
        """This family, reading NaN entries of X as missing values (or not).

        Raises:
          ValueError: ``missing_values`` is True and the family has no
            missing-data EM.
        """
        if missing_values == self.missing_values:
            return self
        if "missing_values" not in {f.name for f in dataclasses.fields(self)}:
            raise ValueError(
                f"{type(self).__name__} does not handle missing values: X must "
                "not contain NaN"
            )
        return dataclasses.replace(self, missing_values=bool(missing_values))

    def expected_log_density(self, params, reference, X: Array) -> Array:
        r"""E[log p(x_n | θ_k)] over the missing entries, shape (N, K).

        The expectation is over the missing entries of x_n drawn from their
        conditional distribution given the observed ones under component k of
        ``reference`` (θ_old), up to terms constant in θ: the per-sample term
        of the expected complete-data log-likelihood Q(θ | θ_old), which the
        missing-data M-step maximises (:mod:`jaxmix.check`). With complete
        data (the default) it is :meth:`log_component_density`.
        """
        if self.missing_values:
            raise NotImplementedError(
                f"{type(self).__name__} has no expected complete-data log density"
            )
        del reference
        return self.log_component_density(params, X)

    @property
    def label(self) -> str:
        """A short name for tables (model selection); default: the class name."""
        return type(self).__name__

    def location(self, params) -> Array:
        """The components' locations (K, D), from :attr:`location_field`."""
        if self.location_field is None:
            raise ValueError(f"{type(self).__name__} has no location parameter")
        return getattr(params, self.location_field)

    def check_data(self, X: np.ndarray) -> None:
        """Raise ``ValueError`` if the (host) data is outside the family's support.

        The estimators and :mod:`jaxmix.check` call it on the host data; the
        functional core (``jaxmix.fit`` and the drivers) does not, so that
        data on an accelerator is never copied back to check it.
        """
        del X

    def assignment_cost(self, X: Array, locations: Array) -> Array:
        """Hard-clustering cost of every sample at every location, (N, K).

        Squared Euclidean distance for K-means, L1 distance for K-medians;
        hard-clustering families override it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is not a hard-clustering family"
        )

    def params_at(self, locations: Array):
        """Params with these locations (K, D), uniform weights and fixed scale."""
        raise NotImplementedError(
            f"{type(self).__name__} is not a hard-clustering family"
        )
