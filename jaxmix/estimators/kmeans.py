r"""``KMeans`` and ``KMedians``: hard EM of the engine, with scikit-learn's interface.

Lloyd's K-means is hard EM of a Gaussian mixture with a fixed covariance σ²I
and uniform weights (:class:`~jaxmix.families.isotropic.IsotropicGaussian`):
one-hot responsibilities on the nearest centre, then the mean of each cluster.
K-medians is hard EM of a Laplace mixture with a fixed scale
(:class:`~jaxmix.families.laplace.Laplace`): nearest centre in L1, then the
coordinate-wise median. Both run in :func:`jaxmix.engine.em.fit` with ``hard=True``
and scikit-learn's stopping rule (``criterion="means"``); the ``n_init``
restarts, their seeding and the final assignment are one vmapped compiled
program.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from numbers import Integral
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmix.engine import batch, em, initialization, online, stream
from jaxmix.estimators import streaming
from jaxmix.estimators.base import (
    EstimatorBase,
    OnlineFit,
    online_state_current,
    pad_samples,
)
from jaxmix.estimators.validation import (
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    ConvergenceWarning,
    Interval,
    StrOptions,
    TransformerMixin,
    check_random_state,
    check_sample_weight,
    jax_key,
    precision,
    validate_data,
)
from jaxmix.families import assignment
from jaxmix.families.gaussian import Gaussian, GaussianParams
from jaxmix.families.isotropic import IsotropicGaussian
from jaxmix.families.laplace import Laplace

# scikit-learn's names for the seeding methods of jaxmix.initialize.
_SEEDING = {"k-means++": "k-means++", "random": "random_from_data"}


def _blocks(function, X, n_clusters):
    """``function`` applied to blocks of rows of X, results concatenated."""
    n_samples, n_features = X.shape
    block = min(n_samples, em.default_chunk_size(n_clusters, n_features))
    n_blocks = -(-n_samples // block)
    padded = jnp.pad(X, ((0, n_blocks * block - n_samples), (0, 0)))
    out = jax.lax.map(function, padded.reshape(n_blocks, block, n_features))
    return jax.tree.map(
        lambda a: a.reshape(n_blocks * block, *a.shape[2:])[:n_samples], out
    )


def _assign(family, X, centers, weights):
    """Nearest centre of every sample (first on ties) and the weighted total cost."""
    n_clusters = centers.shape[0]

    def nearest(rows):
        labels = assignment.first_argmax(-family.assignment_cost(rows, centers))
        # Each sample's cost at its own centre alone: one pair at a time, the
        # cost is computed from direct differences, exact for the inertia.
        costs = jax.vmap(lambda x, c: family.assignment_cost(x[None], c[None])[0, 0])(
            rows, centers[labels]
        )
        return labels, costs

    labels, costs = _blocks(nearest, X, n_clusters)
    total = jnp.sum(costs) if weights is None else weights @ costs
    return labels, total


def lloyd_chunk_size(n_clusters: int) -> int:
    """Rows per block for Lloyd's iteration: about 2^17 distances per block.

    A hard pass with labels holds (C, K) distances and (C, D) rows per block,
    not the (C, K, D) intermediates of a full Gaussian, so its blocks can be
    larger than the engine's default. On this project's 2-core CPU (N=10^6,
    D=16, K=64), blocks of 2048 to 16384 rows ran at the same speed in float32
    and float64, 1024 rows about 15% slower; smaller blocks mean more
    per-block overhead (the re-seeding candidates are merged block by block).
    """
    return int(min(max((1 << 17) // max(1, n_clusters), 1024), 1 << 16))


@functools.partial(
    jax.jit,
    static_argnames=("n_init", "n_clusters", "init", "max_iter", "chunk_size"),
)
def _fit_restarts(
    family,
    X,
    weights,
    key,
    centers,
    tol,
    *,
    n_init,
    n_clusters,
    init,
    max_iter,
    chunk_size,
):
    """All restarts at once: seed, hard EM, final assignment; the lowest inertia.

    The restarts' keys are ``jax.random.split(key, n_init)``.
    """
    keys = jax.random.split(key, n_init)

    def seed(key):
        if init is None:
            return family.params_at(centers)
        index = initialization.seed_indices(key, X, weights, n_clusters, _SEEDING[init])
        return family.params_at(X[index])

    starts = batch.map_starts(seed, keys)
    results = batch.fit_starts(
        family,
        X,
        starts,
        tol,
        weights,
        max_iter=max_iter,
        hard=True,
        criterion="means",
        chunk_size=chunk_size,
    )
    labels, inertia = batch.map_starts(
        lambda p: _assign(family, X, p.means, weights), results.params
    )
    best, index = batch.select_best(results, score=-inertia)
    return best.params.means, labels[index], inertia[index], best.n_iter, best.status


@jax.jit
def _predict(family, X, centers):
    return _assign(family, X, centers, None)[0]


@jax.jit
def _score(family, X, centers, weights):
    return _assign(family, X, centers, weights)[1]


@jax.jit
def _costs(family, X, centers):
    return _blocks(
        lambda rows: family.assignment_cost(rows, centers), X, centers.shape[0]
    )


# Online K-means is stepwise hard EM of this family: its statistics are plain
# sums (IsotropicGaussian's carry re-seeding candidates, which cannot be
# averaged), and its hard E-step is the nearest centre, first on ties.
_ONLINE_FAMILY = Gaussian("spherical", variance=1.0, uniform_weights=True)


@functools.partial(jax.jit, static_argnames=("n_clusters", "method"))
def _seed_centers(key, X, weights, *, n_clusters, method):
    return X[initialization.seed_indices(key, X, weights, n_clusters, method)]


_labels_and_inertia = jax.jit(_assign)


def _online_params(centers) -> GaussianParams:
    n_clusters = centers.shape[0]
    return GaussianParams(
        jnp.full((n_clusters,), 1.0 / n_clusters, centers.dtype),
        centers,
        jnp.ones((n_clusters,), centers.dtype),
    )


class _HardClustering(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, EstimatorBase
):
    """What KMeans and KMedians share (not for direct use).

    Subclasses provide ``_make_family()`` (the hard-clustering family of the
    fitted model, ``family_``) and ``_distance(costs)`` (``transform``'s
    distances from assignment costs), and optionally ``_fit_family(family, X)``
    (the family the fit runs with, e.g. with the data's sort order),
    ``_chunk_size(n_samples)`` and ``_check_convergence(converged)``.
    """

    _parameter_constraints: ClassVar[dict] = {
        **EstimatorBase._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions(set(_SEEDING)), "array-like"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }
    # Not a parameter of every clustering: those without it never stream.
    device_budget = None

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init=1,
        max_iter=300,
        tol=1e-4,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _make_family(self):
        raise NotImplementedError

    def _fit_family(self, family, X: np.ndarray):
        del X
        return family

    def _chunk_size(self, n_samples: int) -> int | None:
        del n_samples
        return None

    def _check_convergence(self, converged: bool) -> None:
        """Warn after a fit that stopped at ``max_iter`` (K-means does not)."""
        del converged

    def _fitted_dtype(self) -> np.dtype:
        return self.cluster_centers_.dtype

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform``: one distance per centre."""
        return self.cluster_centers_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- validation --------------------------------------------------------------
    def _check_init(self, X: np.ndarray):
        """None and the method, or the user's centres and None."""
        if isinstance(self.init, str):
            return None, self.init
        try:
            centers = np.asarray(self.init, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"init must be one of {tuple(_SEEDING)} or an array of centres: {error}"
            ) from None
        if centers.shape != (self.n_clusters, X.shape[1]):
            raise ValueError(
                f"The shape of the initial centers {centers.shape} does not match "
                f"(n_clusters, n_features) = ({self.n_clusters}, {X.shape[1]})"
            )
        if not np.all(np.isfinite(centers)):
            raise ValueError("init contains NaN or infinity")
        return centers.astype(X.dtype), None

    def _check_n_samples(self, X: np.ndarray, weights) -> None:
        if X.shape[0] < self.n_clusters:
            raise ValueError(
                f"n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}."
            )
        if weights is not None and np.count_nonzero(weights) < self.n_clusters:
            raise ValueError(
                f"sample_weight has {np.count_nonzero(weights)} positive entries, "
                f"fewer than n_clusters={self.n_clusters}"
            )

    def _streamed_tol(self, X: np.ndarray) -> float:
        """:meth:`_relative_tol` by chunks: two passes, no copy of the data."""
        if self.tol == 0:
            return 0.0
        total = np.zeros(X.shape[1])
        for start in range(0, X.shape[0], streaming.CHUNK_ROWS):
            total += np.sum(X[start : start + streaming.CHUNK_ROWS], 0, np.float64)
        mean = total / X.shape[0]
        squares = np.zeros(X.shape[1])
        for start in range(0, X.shape[0], streaming.CHUNK_ROWS):
            rows = np.asarray(X[start : start + streaming.CHUNK_ROWS], np.float64)
            squares += np.sum(np.square(rows - mean), axis=0)
        return float(np.mean(squares / X.shape[0])) * self.tol

    def _relative_tol(self, X: np.ndarray) -> float:
        """scikit-learn's tolerance: ``tol`` × the mean variance of the features."""
        if self.tol == 0:
            return 0.0
        return float(np.mean(np.var(X, axis=0, dtype=np.float64))) * self.tol

    # -- fitting -----------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Cluster X (``n_init`` restarts at once; the lowest inertia is kept).

        Args:
          X: data, shape (N, D): an array, a list or a DataFrame. float32 stays
            float32, everything else float64.
          y: ignored.
          sample_weight: optional non-negative weights, shape (N,).

        Returns:
          self.
        """
        del y
        X, weights = self._validate_fit_input(X, sample_weight)
        self._check_n_samples(X, weights)
        centers, init = self._check_init(X)
        n_init = self.n_init
        if centers is not None and n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init "
                f"in {type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=2,
            )
            n_init = 1
        family = self._make_family()
        if streaming.streams(X, self.device_budget):
            return self._fit_streamed(X, weights, family, centers, init, n_init)
        data, data_weights = pad_samples(X, weights)
        with precision(X.dtype):
            results = _fit_restarts(  # host arrays: jnp.asarray would compile
                self._fit_family(family, data),
                data,
                data_weights,
                jax_key(self.random_state),
                None if centers is None else np.asarray(centers),
                np.asarray(self._relative_tol(X), X.dtype),
                n_init=n_init,
                n_clusters=self.n_clusters,
                init=init,
                max_iter=self.max_iter,
                chunk_size=self._chunk_size(data.shape[0]),
            )
            means, labels, inertia, n_iter, status = jax.device_get(results)
        self.cluster_centers_ = np.asarray(means, dtype=X.dtype)
        self.labels_ = np.asarray(labels[: X.shape[0]], dtype=np.int32)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.family_ = family
        self._check_convergence(bool(status == em.CONVERGED))
        return self

    def _fit_streamed(self, X, weights, family, centers, init, n_init):
        """``fit`` over data larger than ``device_budget``, read in chunks.

        Seeds from a random subsample of rows; Lloyd's iterations by
        :func:`jaxmix.fit_stream` (hard EM, the centre-shift rule), all
        restarts sharing each pass; then one pass for every restart's inertia
        and one for the labels of the lowest.
        """
        dtype = X.dtype
        if weights is None:
            weights = np.ones(X.shape[0], dtype)
        keys = jax.random.split(jax_key(self.random_state), n_init)
        with precision(dtype):
            if centers is None:
                rng = check_random_state(self.random_state)
                sample, sample_weights = streaming.subsample(X, weights, rng)
                sample = jnp.asarray(sample)
                sample_weights = jnp.asarray(sample_weights, dtype)
                starts = jax.vmap(
                    lambda key: family.params_at(
                        _seed_centers(
                            key,
                            sample,
                            sample_weights,
                            n_clusters=self.n_clusters,
                            method=_SEEDING[init],
                        )
                    )
                )(keys)
            else:
                start = family.params_at(jnp.asarray(centers))
                starts = jax.tree.map(lambda a: a[None], start)
            results = stream.fit_stream(
                family,
                X,
                starts,
                max_iter=self.max_iter,
                tol=self._streamed_tol(X),
                sample_weight=weights,
                hard=True,
                criterion="means",
                chunk_size=streaming.CHUNK_ROWS,
            )

            def inertias(x, w):
                return jax.vmap(
                    lambda p: _labels_and_inertia(family, x, p.means, w)[1]
                )(results.params)

            inertia = sum(inertias(x, w) for x, w, _ in streaming.chunks(X, weights))
            best, index = batch.select_best(results, score=-inertia)
            labels = [
                np.asarray(_labels_and_inertia(family, x, best.params.means, w)[0][:n])
                for x, w, n in streaming.chunks(X, weights)
            ]
            best, inertia = jax.device_get((best, inertia[index]))
        self.cluster_centers_ = np.asarray(best.params.means, dtype=dtype)
        self.labels_ = np.concatenate(labels).astype(np.int32)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(best.n_iter)
        self.family_ = family
        self._check_convergence(bool(best.status == em.CONVERGED))
        return self

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the cluster of every training sample."""
        return self.fit(X, y, sample_weight).labels_

    def fit_transform(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the distances of the training samples to the centres."""
        return self.fit(X, y, sample_weight).transform(X)

    # -- using a fitted model ----------------------------------------------------
    def _padded_input(self, X, sample_weight=None):
        """``(data, weights, N)``: checked X and weights, padded as in ``fit``."""
        X = self._validate_predict_input(X)
        weights = check_sample_weight(sample_weight, X.shape[0], X.dtype)
        data, weights = pad_samples(X, weights)
        return data, weights, X.shape[0]

    def predict(self, X) -> np.ndarray:
        """The nearest centre of every sample (the first on ties), shape (N,)."""
        data, _, n_samples = self._padded_input(X)
        with precision(data.dtype):
            labels = _predict(self.family_, data, self.cluster_centers_)
            return np.asarray(labels, dtype=np.int32)[:n_samples]

    def transform(self, X) -> np.ndarray:
        """Distances of every sample to every centre, shape (N, K)."""
        data, _, n_samples = self._padded_input(X)
        with precision(data.dtype):
            costs = np.asarray(_costs(self.family_, data, self.cluster_centers_))
        return self._distance(costs[:n_samples])

    def score(self, X, y=None, sample_weight=None) -> float:
        """Opposite of the objective on X (minus the inertia)."""
        del y
        data, weights, _ = self._padded_input(X, sample_weight)
        with precision(data.dtype):
            inertia = _score(self.family_, data, self.cluster_centers_, weights)
            return -float(inertia)


class KMeans(_HardClustering):
    r"""K-means clustering (Lloyd's algorithm) with scikit-learn's interface.

    Lloyd's algorithm is hard EM of a Gaussian mixture with a fixed covariance
    σ²I and uniform weights: every iteration assigns each sample to its nearest
    centre (squared distances by matrix products) and moves each centre to the
    mean of its samples; an empty cluster is re-seeded at the sample farthest
    from its centre. From the same initial centres it follows scikit-learn's
    ``KMeans(algorithm="lloyd")``: the same stopping rule (the centres move by
    Σ_k ‖Δμ_k‖² ≤ ``tol`` × the mean variance of the features; ``tol=0`` runs
    until the assignment stops changing), the same empty-cluster rule and the
    same attributes. float32 data is clustered in float32, float64 data in
    float64, and the ``n_init`` restarts run as one vmapped program.

    Args:
      n_clusters: number of clusters K.
      init: ``"k-means++"`` (greedy, as scikit-learn), ``"random"`` (K distinct
        samples) or an array of initial centres, shape (K, D).
      n_init: number of restarts; the one with the lowest inertia is kept.
      max_iter: maximum number of iterations.
      tol: tolerance on the centre shift, relative to the data's variance.
      random_state: None, an int or a ``numpy.random.RandomState``.
      device_budget: None (the data is always copied to the device), or a
        number of bytes: ``fit`` on data larger than it (e.g. a
        ``numpy.memmap``) seeds on a random subsample of 65,536 rows and runs
        Lloyd's iterations over the data read in chunks
        (:func:`jaxmix.fit_stream`), all restarts sharing each pass.

    Attributes:
      cluster_centers_: centres, shape (K, D).
      labels_: cluster of every training sample, shape (N,).
      inertia_: weighted sum of squared distances to the nearest centre.
      n_iter_: iterations run.
      n_features_in_: D.

    Examples:
      >>> import numpy as np, jaxmix
      >>> X = np.array([[1.0, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
      >>> km = jaxmix.KMeans(n_clusters=2, init=X[[0, 3]]).fit(X)
      >>> km.cluster_centers_
      array([[ 1.,  2.],
             [10.,  2.]])
      >>> km.predict([[0.0, 0], [12, 3]])
      array([0, 1], dtype=int32)
    """

    _parameter_constraints: ClassVar[dict] = {
        **_HardClustering._parameter_constraints,
        "device_budget": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init=1,
        max_iter=300,
        tol=1e-4,
        random_state=None,
        device_budget=None,
    ):
        super().__init__(
            n_clusters,
            init=init,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
        )
        self.device_budget = device_budget

    def _make_family(self) -> IsotropicGaussian:
        return IsotropicGaussian(variance=1.0, uniform_weights=True)

    def partial_fit(self, X, y=None, sample_weight=None):
        r"""Update the centres with one batch: one step of online K-means.

        The first call fixes ``n_features_in_`` and the precision and seeds
        the centres on this batch (``init``: k-means++, random samples, or the
        given array; one seeding, ``n_init`` is not used). Every call, the
        first included, then takes one step of stepwise hard EM
        (:mod:`jaxmix.engine.online`): each sample of the batch goes to its
        nearest centre, and the running per-sample statistics (cluster
        weights and sums) move towards the batch's with the step γ_t = 1/t
        (t₀ = 0, α = 1), so they are the plain average of the batches'
        statistics. With batches of equal total weight every centre is then
        the mean of all the samples ever assigned to it, which is
        scikit-learn's ``MiniBatchKMeans`` update (per-centre step size
        n_batch,k / n_k), without its random re-assignment of small clusters:
        a centre that has never had a sample stays where it was seeded.

        After every call ``cluster_centers_`` are the new centres,
        ``labels_`` and ``inertia_`` are the batch's at those centres (as
        ``MiniBatchKMeans`` computes them), and ``n_iter_`` counts the steps.
        On a model fitted by ``fit`` (or loaded), it starts from the fitted
        centres with new running statistics, so its first step moves every
        centre to the mean of its samples in that batch; the online state is
        not saved by :mod:`jaxmix.io`.

        Args:
          X: a batch of data, shape (N, D), with the first batch's D.
          y: ignored.
          sample_weight: optional non-negative weights, shape (N,).

        Returns:
          self.

        Examples:
          >>> import numpy as np, jaxmix
          >>> X = np.array([[1.0, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
          >>> km = jaxmix.KMeans(n_clusters=2, init=X[[0, 3]])
          >>> km = km.partial_fit(X[[0, 1, 3, 4]]).partial_fit(X[[0, 2, 3, 5]])
          >>> km.cluster_centers_
          array([[ 1.,  2.],
                 [10.,  2.]])
        """
        del y
        kept = None
        if self.__sklearn_is_fitted__():
            self._validate_params()
            dtype = self._fitted_dtype()
            X = validate_data(self, X, reset=False).astype(dtype, copy=False)
            weights = check_sample_weight(sample_weight, X.shape[0], dtype)
            kept = online_state_current(self, (self.cluster_centers_,))
            centers = None if kept is not None else self.cluster_centers_
        else:
            X, weights = self._validate_fit_input(X, sample_weight)
            self._check_n_samples(X, weights)
            dtype = X.dtype
            centers, init = self._check_init(X)
        family = self._make_family()
        data, data_weights = pad_samples(X, weights)
        with precision(dtype):
            data, data_weights = jnp.asarray(data), jnp.asarray(data_weights)
            if kept is not None:
                state = jax.tree.map(jnp.asarray, kept.state)
            else:
                if centers is None:
                    centers = _seed_centers(
                        jax_key(self.random_state),
                        data,
                        data_weights,
                        n_clusters=self.n_clusters,
                        method=_SEEDING[init],
                    )
                start = _online_params(jnp.asarray(centers, dtype))
                state = online.init_online(_ONLINE_FAMILY, start, X.shape[1])
            state = online.online_step(
                _ONLINE_FAMILY, state, data, data_weights, t0=0.0, alpha=1.0, hard=True
            )
            labels, inertia = _labels_and_inertia(
                family, data, state.params.means, data_weights
            )
            state, labels, inertia = jax.device_get((state, labels, inertia))
        self.cluster_centers_ = np.asarray(state.params.means, dtype=dtype)
        self.labels_ = np.asarray(labels[: X.shape[0]], dtype=np.int32)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(state.n_steps)
        self.family_ = family
        self._online_fit = OnlineFit(state, (self.cluster_centers_,))
        return self

    @staticmethod
    def _distance(costs: np.ndarray) -> np.ndarray:
        return np.sqrt(costs)  # the cost is the squared Euclidean distance

    def _chunk_size(self, n_samples: int) -> int | None:
        chunk = lloyd_chunk_size(self.n_clusters)
        return None if n_samples <= chunk else chunk


class KMedians(_HardClustering):
    r"""K-medians clustering (L1 cost) with the interface of ``KMeans``.

    Hard EM of a Laplace mixture with a fixed scale and uniform weights: every
    iteration assigns each sample to its nearest centre in L1 distance and moves
    each centre to the (weighted, lower) coordinate-wise median of its samples,
    computed exactly in JAX from the columns sorted once. ``inertia_`` is the
    weighted sum of L1 distances, and ``transform`` returns L1 distances.

    ``tol`` defaults to 0: the fit then runs until the assignment stops
    changing, which makes the result a K-medians fixed point (every centre a
    coordinate-wise median of its samples, every sample with its nearest
    centre in L1); a ``ConvergenceWarning`` says when ``max_iter`` came first.
    With ``tol > 0`` it stops, as K-means does, once the centres move by less
    than ``tol`` × the mean variance of the features.

    Args:
      n_clusters: number of clusters K.
      init: ``"k-means++"``, ``"random"`` or an array of initial centres (K, D).
      n_init: number of restarts; the one with the lowest inertia is kept.
      max_iter: maximum number of iterations.
      tol: tolerance on the centre shift (0: until the assignment is stable).
      random_state: None, an int or a ``numpy.random.RandomState``.

    Examples:
      >>> import numpy as np, jaxmix
      >>> X = np.array([[0.0, 0], [0, 1], [0, 9], [10, 0], [11, 1], [30, 2]])
      >>> km = jaxmix.KMedians(n_clusters=2, init=X[[0, 3]]).fit(X)
      >>> km.cluster_centers_
      array([[ 0.,  1.],
             [11.,  1.]])
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init=1,
        max_iter=300,
        tol=0.0,
        random_state=None,
    ):
        super().__init__(
            n_clusters,
            init=init,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
        )

    @staticmethod
    def _distance(costs: np.ndarray) -> np.ndarray:
        return costs  # the cost is the L1 distance

    def _make_family(self) -> Laplace:
        return Laplace(scale=1.0, uniform_weights=True)

    def _fit_family(self, family: Laplace, X: np.ndarray) -> Laplace:
        # The medians need the columns sorted: once, on the host, outside the
        # compiled loop. The order belongs to the training data, not to the
        # fitted model (family_ has none).
        order = np.argsort(X, axis=0, kind="stable").astype(np.int32)
        return dataclasses.replace(family, order=jnp.asarray(order))

    def _check_convergence(self, converged: bool) -> None:
        if not converged and self.tol == 0:
            warnings.warn(
                f"KMedians stopped after max_iter={self.max_iter} iterations "
                "before reaching a fixed point; increase max_iter.",
                ConvergenceWarning,
                stacklevel=3,
            )
