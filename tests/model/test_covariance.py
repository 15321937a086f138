"""The per-covariance-type maths in ``streamem.model.covariance`` against scipy and plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from streamem.model.covariance import (
    DENSE_MOMENT_FEATURES,
    KINDS,
    RELATIVE_FLOOR,
    estimate_log_gaussian_prob,
)

TYPES = ("full", "diag", "spherical")


def random_covariances(kind: str, K: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Random positive-definite covariances in the kind's shape, with varied scales."""
    if kind == "full":
        A = rng.normal(size=(K, d, d))
        return A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(d)
    if kind == "diag":
        return rng.uniform(0.05, 5.0, size=(K, d))
    return rng.uniform(0.05, 5.0, size=K)


def as_full(kind: str, cov: np.ndarray, d: int) -> np.ndarray:
    """(K, d, d) covariances built independently of the module's ``to_full``."""
    if kind == "full":
        return cov
    if kind == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_gaussian_prob_matches_scipy(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    K, d, n = 4, 3, 50
    means = rng.normal(0.0, 3.0, size=(K, d))
    cov = random_covariances(kind, K, d, rng)
    X = rng.normal(0.0, 3.0, size=(n, d))
    c = rng.normal(0.0, 10.0, size=d)
    prec_chol = KINDS[kind].precision_cholesky(cov)
    got = estimate_log_gaussian_prob(KINDS[kind], X - c, means - c, prec_chol)
    full = as_full(kind, cov, d)
    expected = np.stack(
        [multivariate_normal(means[k], full[k]).logpdf(X) for k in range(K)], axis=1
    )
    assert got.shape == (n, K)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", TYPES)
def test_reference_shift_does_not_change_log_prob(kind: str) -> None:
    """The log-density is the same whatever reference point the frame is shifted by."""
    rng = np.random.default_rng(3)
    K, d = 3, 4
    means = rng.normal(size=(K, d))
    X = rng.normal(size=(20, d))
    prec_chol = KINDS[kind].precision_cholesky(random_covariances(kind, K, d, rng))
    at_origin = estimate_log_gaussian_prob(KINDS[kind], X, means, prec_chol)
    shifted = estimate_log_gaussian_prob(KINDS[kind], X - 7.5, means - 7.5, prec_chol)
    np.testing.assert_allclose(shifted, at_origin, rtol=1e-10)


@pytest.mark.parametrize("kind", TYPES)
def test_precision_cholesky_inverts_the_covariance(kind: str) -> None:
    """P Pᵀ = Σ⁻¹ and log_det(P) = −½ log det Σ."""
    rng = np.random.default_rng(4)
    K, d = 3, 4
    cov = random_covariances(kind, K, d, rng)
    P = KINDS[kind].precision_cholesky(cov)
    full = as_full(kind, cov, d)
    P_full = P if kind == "full" else as_full(kind, P, d)
    precision = P_full @ np.swapaxes(P_full, 1, 2)
    np.testing.assert_allclose(precision @ full, np.broadcast_to(np.eye(d), (K, d, d)),
                               atol=1e-10)
    if kind == "full":
        assert np.allclose(np.tril(P, -1), 0.0), "factors must be upper triangular"
    np.testing.assert_allclose(KINDS[kind].log_det(P, d), -0.5 * np.linalg.slogdet(full)[1],
                               rtol=1e-10)


@pytest.mark.parametrize("kind", TYPES)
def test_moment_and_outer_shapes_and_values(kind: str) -> None:
    rng = np.random.default_rng(5)
    n, K, d = 30, 4, 3
    Y = rng.normal(size=(n, d))
    R = rng.dirichlet(np.ones(K), size=n)
    spec = KINDS[kind]
    shape = spec.scatter_shape(K, d)
    full_moment = np.einsum("nk,ni,nj->kij", R, Y, Y)
    a, b = rng.normal(size=(K, d)), rng.normal(size=(K, d))
    full_outer = a[:, :, None] * b[:, None, :]
    moment, outer = spec.moment(Y, R, np.ones((n, K), dtype=bool)), spec.outer(a, b)
    assert moment.shape == shape and outer.shape == shape
    if kind == "full":
        np.testing.assert_allclose(moment, full_moment, rtol=1e-12)
        np.testing.assert_allclose(outer, full_outer, rtol=1e-12)
    elif kind == "diag":
        np.testing.assert_allclose(moment, np.diagonal(full_moment, axis1=1, axis2=2))
        np.testing.assert_allclose(outer, a * b)
    else:
        np.testing.assert_allclose(moment, np.trace(full_moment, axis1=1, axis2=2) / d)
        np.testing.assert_allclose(outer, (a * b).mean(axis=1))


def test_sparse_full_moment_sums_over_active_pairs_only() -> None:
    """Above ``DENSE_MOMENT_FEATURES`` with few active pairs, each component's GEMM runs over
    its active points only: the result is Σ over active (i, k) of R_ik y_i y_iᵀ."""
    rng = np.random.default_rng(8)
    n, K, d = 60, 4, DENSE_MOMENT_FEATURES + 4
    Y = rng.normal(size=(n, d))
    R = rng.dirichlet(np.ones(K), size=n)
    active = rng.random((n, K)) < 0.3
    active[:, 2] = False
    expected = np.einsum("nk,ni,nj->kij", R * active, Y, Y)
    got = KINDS["full"].moment(Y, R, active)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert np.all(got[2] == 0.0)
    dense = KINDS["full"].moment(Y, R, np.ones((n, K), dtype=bool))
    np.testing.assert_allclose(dense, np.einsum("nk,ni,nj->kij", R, Y, Y), rtol=1e-12)


def test_add_floor_full_symmetrises_and_adds_reg() -> None:
    rng = np.random.default_rng(6)
    cov = rng.normal(size=(3, 4, 4))
    original = cov.copy()
    floored = KINDS["full"].add_floor(cov.copy(), 0.25)
    sym = 0.5 * (original + np.swapaxes(original, 1, 2))
    own = np.maximum(np.diagonal(sym, axis1=1, axis2=2), 0.0)  # each variance's own share
    floor = 0.25 + RELATIVE_FLOOR * own
    expected = sym + floor[:, :, None] * np.eye(4)
    np.testing.assert_allclose(floored, expected, rtol=1e-14)
    np.testing.assert_array_equal(floored, np.swapaxes(floored, 1, 2))


@pytest.mark.parametrize("kind", ["diag", "spherical"])
def test_add_floor_diagonal_clips_negative_and_adds_reg(kind: str) -> None:
    cov = np.array([[0.5, -1e-9, 2.0]]) if kind == "diag" else np.array([0.5, -1e-9, 2.0])
    floored = KINDS[kind].add_floor(cov, 0.1)
    np.testing.assert_allclose(floored, np.maximum(cov, 0.0) + 0.1)
    assert floored.min() >= 0.1


@pytest.mark.parametrize("kind", TYPES)
def test_full_conversion_round_trip_and_variances(kind: str) -> None:
    rng = np.random.default_rng(7)
    K, d = 3, 4
    cov = random_covariances(kind, K, d, rng)
    spec = KINDS[kind]
    full = spec.to_full(cov, d)
    np.testing.assert_allclose(full, as_full(kind, cov, d))
    np.testing.assert_allclose(spec.from_full(full), cov)
    var = spec.variances(cov)
    eig = np.linalg.eigvalsh(full)
    np.testing.assert_allclose(var[:, 0], eig[:, 0], rtol=1e-10)
    np.testing.assert_allclose(var[:, -1], eig[:, -1], rtol=1e-10)
    assert np.all(np.diff(var, axis=1) >= 0)


def test_n_parameters_per_type() -> None:
    assert KINDS["full"].n_parameters(3, 4) == 3 * 10
    assert KINDS["diag"].n_parameters(3, 4) == 12
    assert KINDS["spherical"].n_parameters(3, 4) == 3


@pytest.mark.parametrize("kind", ["full", "diag", "spherical"])
def test_centred_points_are_shared_without_changing_the_e_step(kind: str) -> None:
    from streamem.model.params import centred, e_step, make_params

    rng = np.random.default_rng(5)
    X = rng.normal(50.0, 3.0, (40, 3))
    full = np.stack([np.eye(3) * s for s in (1.0, 2.0)])
    params = make_params(KINDS[kind], np.array([0.4, 0.6]), rng.normal(50.0, 3.0, (2, 3)),
                         KINDS[kind].from_full(full))
    Y = centred(X, params.center)
    assert Y.shape == X.shape and Y.T.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(Y, X - params.center)
    resp, log_lik = e_step(KINDS[kind], params, X)
    shared = e_step(KINDS[kind], params, X, Y)
    np.testing.assert_array_equal(shared[0], resp)
    np.testing.assert_array_equal(shared[1], log_lik)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("kind", TYPES)
def test_outer_sum_is_the_sum_of_the_outer_products(kind: str) -> None:
    rng = np.random.default_rng(9)
    A, B = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    spec = KINDS[kind]
    expected = sum(spec.outer(A[:, j], B[:, j]) for j in range(3))
    np.testing.assert_allclose(spec.outer_sum(A, B), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", TYPES)
def test_refresh_gives_the_batched_covariances_and_factors(kind: str) -> None:
    """``kind.refresh`` (a few rows, in place) and ``add_floor`` + ``precision_cholesky`` +
    ``log_det`` of all rows agree on the rows refreshed (the covariances to rounding, exactly
    symmetric; each factor bit for bit that of its covariance, as loading computes it), and
    leave the others alone."""
    rng = np.random.default_rng(10)
    K, d = 5, 4
    spec = KINDS[kind]
    nk = rng.uniform(0.05, 0.4, size=K)
    scatter = spec.from_full(as_full(kind, random_covariances(kind, K, d, rng), d))
    scatter = scatter * nk.reshape((-1,) + (1,) * (scatter.ndim - 1))
    if kind == "full":
        scatter[:, 0, 1] += 1e-9  # a scatter an update left a little asymmetric
    shape = (-1,) + (1,) * (scatter.ndim - 1)
    want_cov = spec.add_floor(scatter / nk.reshape(shape), 1e-6)
    want_prec = spec.precision_cholesky(want_cov)
    old_cov, old_prec = np.full_like(want_cov, 7.0), np.full_like(want_prec, 7.0)
    cov, prec = old_cov.copy(), old_prec.copy()
    rows = [3, 0]
    log_dets = spec.refresh(scatter, nk[rows].tolist(), rows, 1e-6, cov, prec, d)
    np.testing.assert_allclose(cov[rows], want_cov[rows], rtol=0,
                               atol=1e-15 * np.abs(want_cov).max())
    np.testing.assert_allclose(prec[rows], want_prec[rows], rtol=1e-13,
                               atol=1e-13 * np.abs(want_prec).max())
    np.testing.assert_array_equal(prec[rows], spec.precision_cholesky(cov[rows]))
    np.testing.assert_allclose(log_dets, spec.log_det(want_prec, d)[rows], rtol=1e-14, atol=1e-14)
    if kind == "full":
        np.testing.assert_array_equal(cov[rows], np.swapaxes(cov[rows], 1, 2))
    kept = [1, 2, 4]
    np.testing.assert_array_equal(cov[kept], old_cov[kept])
    np.testing.assert_array_equal(prec[kept], old_prec[kept])


def test_refresh_refuses_a_covariance_that_is_not_positive_definite() -> None:
    scatter = np.stack([np.eye(3), -np.eye(3)])
    cov, prec = np.zeros((2, 3, 3)), np.zeros((2, 3, 3))
    with pytest.raises(np.linalg.LinAlgError, match="covariance 1"):
        KINDS["full"].refresh(scatter, [1.0, 1.0], [0, 1], 1e-6, cov, prec, 3)
