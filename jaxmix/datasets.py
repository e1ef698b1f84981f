"""Data sets that ship with jaxmix."""

from __future__ import annotations

import importlib.resources

import numpy as np


def load_faithful() -> tuple[np.ndarray, list[str]]:
    """Old Faithful geyser eruptions (public domain): 272 samples, 2 features.

    Returns:
      ``(X, feature_names)``: eruption duration (minutes) and waiting time to the
      next eruption (minutes), float64 of shape (272, 2), and their names.
    """
    source = importlib.resources.files("jaxmix").joinpath("data/faithful.csv")
    with source.open("r") as handle:
        header = handle.readline().strip().split(",")
        X = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    return X, header
