"""Saving and loading fitted estimators as ``.npz`` files, without pickle."""

from __future__ import annotations

import json

import numpy as np

_FORMAT = "jaxmix-model-1"


def save_model(path, estimator) -> None:
    """Write a fitted estimator's parameters and fitted arrays to ``path``.

    The file holds plain arrays and a JSON header (class name and the
    ``__init__`` parameters that are plain values), so it loads with
    ``allow_pickle=False``.
    """
    arrays = {
        name: np.asarray(value)
        for name, value in vars(estimator).items()
        if name.endswith("_")
        and not name.startswith("_")
        and isinstance(value, (np.ndarray, float, int, bool, np.generic, list))
    }
    params = {
        name: value
        for name, value in estimator.get_params().items()
        if value is None or isinstance(value, (str, int, float, bool))
    }
    header = {"format": _FORMAT, "class": type(estimator).__name__, "params": params}
    np.savez(path, __header__=np.asarray(json.dumps(header)), **arrays)


def load_model(path):
    """Read an estimator written by :func:`save_model`.

    Raises:
      ValueError: if the file is not a jaxmix model.
    """
    import jaxmix

    with np.load(path, allow_pickle=False) as data:
        if "__header__" not in data.files:
            raise ValueError(f"{path} is not a jaxmix model file (no header)")
        header = json.loads(str(data["__header__"]))
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} has unknown format {header.get('format')!r}")
        cls = getattr(jaxmix, header["class"], None)
        if cls is None:
            raise ValueError(f"{path} holds an unknown estimator {header['class']!r}")
        estimator = cls(**header["params"])
        for name in data.files:
            if name == "__header__":
                continue
            value = data[name]
            if value.ndim == 0:
                value = value.item()
            elif name == "lower_bounds_":
                value = value.tolist()
            setattr(estimator, name, value)
    return estimator
