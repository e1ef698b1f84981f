"""Truncated SVD and image compression against numpy and Eckart–Young."""

import jax
import numpy as np
import pytest

from jaxmix import lowrank

RANKS = (1, 5, 17)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def grey():
    # Smooth structure plus noise: a spread of singular values, like a photo.
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(
        np.linspace(0, 3, 40), np.linspace(0, 5, 30), indexing="ij"
    )
    return 100 * np.sin(rows * cols) + rng.normal(scale=5.0, size=rows.shape)


@pytest.fixture(scope="module")
def colour():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("rank", RANKS)
def test_eckart_young_grey(grey, rank):
    approximation = np.asarray(lowrank.low_rank_approximation(grey, rank))
    s = np.linalg.svd(grey, compute_uv=False)
    expected = np.sqrt(np.sum(s[rank:] ** 2))
    np.testing.assert_allclose(
        np.linalg.norm(grey - approximation), expected, rtol=1e-9
    )
    np.testing.assert_allclose(
        lowrank.approximation_error(grey, approximation), expected, rtol=1e-9
    )
    np.testing.assert_allclose(
        lowrank.approximation_error(grey, approximation, relative=True),
        expected / np.linalg.norm(grey),
        rtol=1e-9,
    )
    assert np.linalg.matrix_rank(approximation) == rank


@pytest.mark.parametrize("rank", RANKS)
def test_eckart_young_colour_per_channel(colour, rank):
    approximation = np.asarray(lowrank.low_rank_approximation(colour, rank))
    assert approximation.shape == colour.shape
    image = colour.astype(np.float64)
    for c in range(3):
        s = np.linalg.svd(image[:, :, c], compute_uv=False)
        np.testing.assert_allclose(
            np.linalg.norm(image[:, :, c] - approximation[:, :, c]),
            np.sqrt(np.sum(s[rank:] ** 2)),
            rtol=1e-9,
        )


def test_truncated_svd_matches_numpy(grey):
    U, s, Vt = (np.asarray(a) for a in lowrank.truncated_svd(grey, 5))
    u_np, s_np, vt_np = np.linalg.svd(grey, full_matrices=False)
    np.testing.assert_allclose(s, s_np[:5], rtol=1e-10)
    # Singular vectors are defined up to sign: compare the rank-one terms.
    for i in range(5):
        np.testing.assert_allclose(
            np.outer(U[:, i], Vt[i]), np.outer(u_np[:, i], vt_np[i]), atol=1e-9
        )
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(5), atol=1e-12)


def test_full_rank_reconstructs_the_image(grey):
    np.testing.assert_allclose(
        lowrank.low_rank_approximation(grey, min(grey.shape)), grey, atol=1e-9
    )


def test_singular_values_match_numpy(grey, colour):
    np.testing.assert_allclose(
        lowrank.singular_values(grey), np.linalg.svd(grey, compute_uv=False), rtol=1e-10
    )
    per_channel = np.linalg.svd(
        np.moveaxis(colour.astype(np.float64), -1, 0), compute_uv=False
    )
    np.testing.assert_allclose(lowrank.singular_values(colour), per_channel, rtol=1e-10)


def test_compression_ratio_counts_stored_factors(colour):
    rank = 5
    U, s, Vt = lowrank.truncated_svd(np.moveaxis(colour, -1, 0), rank)
    stored = U.size + s.size + Vt.size
    assert lowrank.compression_ratio(colour.shape, rank) == pytest.approx(
        colour.size / stored
    )
    assert lowrank.compression_ratio(colour.shape[:2], rank) == pytest.approx(
        colour.size / stored
    )


def test_bad_input_raises_value_error(grey):
    with pytest.raises(ValueError, match="rank"):
        lowrank.low_rank_approximation(grey, 0)
    with pytest.raises(ValueError, match="rank"):
        lowrank.truncated_svd(grey, 31)
    with pytest.raises(ValueError, match="image"):
        lowrank.singular_values(np.zeros(5))
    with pytest.raises(ValueError, match="same shape"):
        lowrank.approximation_error(grey, grey[:-1])
    with pytest.raises(ValueError, match="shape"):
        lowrank.compression_ratio((4,), 1)
