"""Log-polar space convolution (LPSC): the region map of a window and its pooling matrix.

Paper: Bing Su and Ji-Rong Wen, "Log-Polar Space Convolution Layers", NeurIPS 2022.

A k_h×k_w window is cut into `rings` distance levels × `sectors` direction sectors; all pixels
of one region share one weight. The region map reproduces the official implementation's rules
exactly (including its float32 roundings), so trained weights move between it and keras_convx
(see `keras_convx.layers.log_polar.from_official_weights`). Static NumPy, built once per
configuration; the execution paths are in `keras_convx.ops.log_polar` (which re-exports these
names).
"""

import functools
import math

import numpy as np

from keras_convx import arguments
from keras_convx.ops.core import normalize_pair

POOLINGS = ("mean", "sum", "max")


def normalize_kernel_size(kernel_size):
    """An int or a pair of ints ≥ 1 → (k_h, k_w)."""
    return normalize_pair("kernel_size", kernel_size)


def validate_region_args(kernel_size, rings, sectors, growth_rate, initial_angle):
    kernel_size = normalize_kernel_size(kernel_size)
    rings = arguments.integer("rings", rings, 1)
    sectors = arguments.integer("sectors", sectors, 1)
    growth_rate = arguments.number("growth_rate", growth_rate, 1, exclusive_minimum=True)
    initial_angle = arguments.number("initial_angle", initial_angle)  # radians
    return kernel_size, rings, sectors, growth_rate, initial_angle


def ring_thresholds(kernel_size, rings, growth_rate):
    """Squared-distance thresholds t_l = float32(d1·(g²)^l), l = 0..rings−1."""
    kh, kw = normalize_kernel_size(kernel_size)
    radius_sq = ((max(kh, kw) - 1) // 2) ** 2
    g2 = growth_rate**2
    d1 = max(radius_sq / g2 ** (rings - 1), 2.0)
    return np.array([d1 * g2**level for level in range(rings)], dtype=np.float32)


@functools.lru_cache(maxsize=256)
def _regions_cached(kernel_size, rings, sectors, growth_rate, initial_angle):
    kh, kw = kernel_size
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    dy, dx = np.meshgrid(np.arange(kh) - cy, np.arange(kw) - cx, indexing="ij")
    # Direction: counter-clockwise from +x with dy pointing down; the centre gets 0.
    theta = np.arctan2((-dy).astype(np.float64), dx.astype(np.float64)) + initial_angle
    theta = np.where(theta > 2 * np.pi, theta - 2 * np.pi, theta)
    theta = np.where(theta < 0, theta + 2 * np.pi, theta)
    bounds = np.array(
        [2 * np.pi * (a + 1) / sectors - 1e-6 for a in range(sectors)], dtype=np.float32
    ).astype(np.float64)
    sector = np.minimum(np.searchsorted(bounds, theta, side="left"), sectors - 1)
    # Distance: an ellipse of axis ratio k_h/k_w, rotated by the initial angle.
    ratio = kh / kw
    c, s = math.cos(initial_angle), math.sin(initial_angle)
    rho_sq = (dx * c - dy * s) ** 2 + ((-dx * s - dy * c) ** 2) / ratio**2
    rho_sq = rho_sq.astype(np.float32).astype(np.float64)
    thresholds = ring_thresholds(kernel_size, rings, growth_rate).astype(np.float64)
    ring = np.minimum(np.searchsorted(thresholds, rho_sq, side="left"), rings - 1).astype(np.int32)
    sector = sector.astype(np.int32)
    ring.setflags(write=False)
    sector.setflags(write=False)
    return ring, sector


def log_polar_regions(kernel_size, rings, sectors, growth_rate, initial_angle=0.0):
    """The log-polar region map of a window: (ring index map, sector index map).

    Rules (those of the official implementation, reproduced exactly): the window's centre is
    `((k_h − 1)//2, (k_w − 1)//2)`; an offset (dy, dx) (dy pointing down) has direction
    θ = atan2(−dy, dx) + initial_angle, wrapped once into [0, 2π], and falls in the first
    sector a with θ ≤ float32(2π(a+1)/sectors − 1e-6) (clamped to sectors − 1). Its squared
    elliptical distance ρ² = (dx·cosφ − dy·sinφ)² + ((−dx·sinφ − dy·cosφ)/(k_h/k_w))²
    (rounded to float32) falls in the first ring l with ρ² ≤ float32(d1·g^(2l)), where
    d1 = max(R²/g^(2(rings−1)), 2) and R = (max(k_h, k_w) − 1)//2; the corners beyond the
    last threshold join the outer ring. The centre pixel is in ring 0, sector of θ = φ.

    Args:
        kernel_size: int or (k_h, k_w).
        rings: number of distance levels (≥ 1), `Lr` in the paper.
        sectors: number of direction sectors (≥ 1), `Lθ` in the paper.
        growth_rate: ratio between consecutive ring radii (> 1), `g` in the paper.
        initial_angle: rotation φ of the sector grid, radians.

    Returns:
        `(ring, sector)`: two read-only int32 NumPy arrays of shape (k_h, k_w).

    Example:

    >>> ring, sector = log_polar_regions(5, rings=2, sectors=6, growth_rate=3)
    >>> ring[0].tolist(), sector[0].tolist()
    ([1, 1, 1, 1, 1], [2, 1, 1, 1, 0])
    """
    args = validate_region_args(kernel_size, rings, sectors, growth_rate, initial_angle)
    return _regions_cached(*args)


def empty_regions(kernel_size, rings, sectors, growth_rate, initial_angle=0.0):
    """The (ring, sector) regions of the window that no pixel falls in.

    Their weights never reach the output (dead parameters): small windows with many regions
    leave some empty, e.g. a 3×3 window with 2 rings × 6 sectors (growth rate 2) has 6 of its
    12 regions empty: all nine pixels fall in ring 0, none in ring 1.

    Args: as `log_polar_regions`.

    Returns:
        list of `(ring, sector)` int pairs, sorted; empty when every region has a pixel.

    Example:

    >>> len(empty_regions(3, rings=2, sectors=6, growth_rate=2.0))
    6
    """
    args = validate_region_args(kernel_size, rings, sectors, growth_rate, initial_angle)
    ring, sector = _regions_cached(*args)
    sizes = region_sizes(ring, sector, args[1], args[2])
    return [(int(r), int(a)) for r, a in np.argwhere(sizes == 0)]


def region_sizes(ring, sector, rings, sectors):
    """Number of window pixels in each region, shape (rings, sectors)."""
    counts = np.zeros((rings, sectors), np.int64)
    np.add.at(counts, (ring, sector), 1)
    return counts


@functools.lru_cache(maxsize=256)
def pooling_matrix(kernel_size, rings, sectors, growth_rate, initial_angle, pooling, center):
    """Static (k_h·k_w, R') matrix P with pooled = patches @ P.

    R' = rings·sectors (+1 with `center`: the last column picks the centre pixel).
    P[q, r] = 1/|Ω_r| ("mean") or 1 ("sum", "max": the 0/1 membership) for q ∈ Ω_r.
    """
    ring, sector = log_polar_regions(kernel_size, rings, sectors, growth_rate, initial_angle)
    kh, kw = normalize_kernel_size(kernel_size)
    n_regions = rings * sectors
    region = (ring * sectors + sector).reshape(-1)
    p = np.zeros((kh * kw, n_regions + (1 if center else 0)), np.float64)
    p[np.arange(kh * kw), region] = 1.0
    if pooling == "mean":
        sizes = region_sizes(ring, sector, rings, sectors).reshape(-1)
        p[:, :n_regions] /= np.maximum(sizes, 1)
    if center:
        p[((kh - 1) // 2) * kw + (kw - 1) // 2, n_regions] = 1.0
    p.setflags(write=False)
    return p


def region_offsets(pooling_matrix_):
    """((window offsets q, weights), ...) per column of the pooling matrix; hashable, so the
    backends can cache compiled pooling functions on it. A region may be empty."""
    columns = np.asarray(pooling_matrix_).T
    return tuple(
        (tuple(np.flatnonzero(col).tolist()), tuple(col[np.flatnonzero(col)].tolist())) for col in columns
    )
