"""The refactored code gives the results the code gave before, to 1e-12 (float64).

``tests/data/regression_fits.npz`` was written by ``tests/regression_fits.py``
before the family protocol and the package layout were introduced; the same
fits are recomputed here through the public API.
"""

import numpy as np
import pytest
import regression_fits


@pytest.fixture(scope="module")
def recorded():
    with np.load(regression_fits.PATH) as data:
        return {name: data[name] for name in data.files}


def test_same_results_as_before_the_refactoring(recorded):
    now = regression_fits.compute()
    assert sorted(now) == sorted(recorded)
    for name, before in recorded.items():
        np.testing.assert_allclose(
            now[name], before, rtol=1e-12, atol=1e-12, err_msg=name
        )
