"""Matplotlib helpers (matplotlib is the optional ``plot`` extra)."""

from __future__ import annotations

import numpy as np

from jaxmix.estimators.validation import precision
from jaxmix.families.covariance_kernels import KERNELS


def _covariance_2d(model, k: int, dims=(0, 1)) -> np.ndarray:
    kernel = KERNELS[model.covariance_type]
    n_components, n_features = model.means_.shape
    covariances = np.asarray(model.covariances_)
    with precision(covariances.dtype):
        full = np.asarray(kernel.to_full(covariances, n_components, n_features))
    return full[k][np.ix_(dims, dims)]


def covariance_ellipse(ax, mean, covariance, n_std: float = 2.0, **kwargs):
    """Draw the n_std contour of a 2-D Gaussian as an ellipse on ``ax``."""
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(covariance)
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    width, height = 2 * n_std * np.sqrt(np.maximum(values[::-1], 0))
    ellipse = Ellipse(mean, width, height, angle=angle, fill=False, **kwargs)
    ax.add_patch(ellipse)
    return ellipse


def plot_mixture_2d(ax, model, X, dims=(0, 1), resp=None, title=None):
    """Scatter the data coloured by responsibility, with component ellipses.

    Args:
      ax: a matplotlib Axes.
      model: a fitted ``GaussianMixture``.
      X: data, shape (N, D).
      dims: the two features to show.
      resp: optional responsibilities (N, K) to colour by; default predict_proba.
      title: optional title.
    """
    import matplotlib.pyplot as plt

    X = np.asarray(X)
    if resp is None:
        resp = model.predict_proba(X)
    K = resp.shape[1]
    colours = plt.get_cmap("tab10")(np.arange(K) % 10)[:, :3]
    point_colours = np.clip(resp @ colours, 0, 1)
    ax.scatter(X[:, dims[0]], X[:, dims[1]], c=point_colours, s=12, lw=0)
    for k in range(K):
        mean = np.asarray(model.means_)[k, list(dims)]
        cov = _covariance_2d(model, k, dims)
        covariance_ellipse(ax, mean, cov, color=colours[k], lw=2)
        ax.plot(*mean, "x", color=colours[k], ms=8, mew=2)
    ax.set_title(title or f"{K} components, {model.covariance_type} covariance")
    return ax
