"""NumPy oracle of the groups cN and dN (p4 = c4, p4m = d4), written from their definition.

Independent of keras_convx. An element is a 2×2 orthogonal matrix acting on a kernel's pixel
coordinates (x right, y up, origin at the kernel's centre): element g < N is the rotation
by 2πg/N (counter-clockwise), element N + j the rotation by −2πj/N after the mirror
x → −x. The group table `P[g][h] = g⁻¹h` is found by multiplying matrices.

A kernel moves as `T_g(w)(p) = w(g⁻¹p)`. When every element maps the pixel grid onto
itself (N divides 4, or a 1×1 kernel) that is an exact move of pixels. Otherwise every
element acts on the kernel's least-squares coefficients in the steerable basis — circular
harmonics `cos mφ`, `sin mφ` times Gaussian rings `exp(−(r − ρ)²/(2σ²))` of radius
ρ = 0, 1, ..., (k − 1)/2 (σ = 0.6, 0.4 on the outermost ring), m = 0 at the centre, m ≤ 1
on the outermost ring and m ≤ 2ρ − ((ρ + 1) mod 2) between, the m > 0 harmonics 0 at the
centre — through the harmonics' analytic rotation (φ → φ − θ) and
reflection (φ → π − φ): `T_g(w) = B · D_g · B⁺ w`.
"""

import functools
import math

import numpy as np


def parse(group):
    """(N, mirrored)."""
    if group in ("p4", "p4m"):
        return 4, group == "p4m"
    return int(group[1:]), group[0] == "d"


def order(group):
    n, mirrored = parse(group)
    return 2 * n if mirrored else n


def rotation(theta):
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


MIRROR = np.array([[-1.0, 0.0], [0.0, 1.0]])


def element(group, g):
    """(matrix, angle θ, mirrored): the element is `rotation(θ) @ MIRROR^mirrored`."""
    n, _ = parse(group)
    if g < n:
        theta = 2 * math.pi * g / n
        return rotation(theta), theta, False
    theta = -2 * math.pi * (g - n) / n
    return rotation(theta) @ MIRROR, theta, True


@functools.lru_cache(maxsize=None)
def table(group):
    """P[g][h]: the index of g⁻¹h, found by matching matrices."""
    count = order(group)
    mats = [element(group, g)[0] for g in range(count)]

    def index(m):
        (i,) = [i for i in range(count) if np.allclose(mats[i], m, atol=1e-9)]
        return i

    return [[index(mats[g].T @ mats[h]) for h in range(count)] for g in range(count)]


def _coordinates(k):
    c = (k - 1) / 2
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    return (j - c).reshape(-1), (c - i).reshape(-1)


def _terms(k):
    radii = list(range((k - 1) // 2 + 1))

    def top(rho):
        return 0 if rho == 0 else 1 if rho == radii[-1] else 2 * rho - (rho + 1) % 2

    return [(rho, m, kind, rho == radii[-1] and rho > 0)
            for rho in radii for m in range(top(rho) + 1) for kind in (("cos", "sin") if m else ("cos",))]


def basis(k):
    """(k², B) sampled basis."""
    x, y = _coordinates(k)
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    cols = []
    for rho, m, kind, outer in _terms(k):
        ring = np.exp(-((r - rho) ** 2) / (2 * (0.4 if outer else 0.6) ** 2))
        if m:
            ring = np.where(r < 1e-9, 0.0, ring)
        cols.append(ring * (np.cos(m * phi) if kind == "cos" else np.sin(m * phi)))
    return np.stack(cols, axis=1)


def coefficient_action(group, g, k):
    """D_g: column b holds the coefficients of `T_g(basis b)`."""
    _, theta, mirrored = element(group, g)
    terms = _terms(k)
    d = np.zeros((len(terms), len(terms)))
    position = {(rho, m, kind): i for i, (rho, m, kind, _) in enumerate(terms)}
    for b, (rho, m, kind, _) in enumerate(terms):
        if m == 0:
            d[b, b] = 1.0
            continue
        # T_g b(p) = ring(r) · trig(m ψ), ψ = φ − θ (rotation) or π − φ + θ (after the mirror)
        shift = m * (math.pi + theta) if mirrored else -m * theta
        sign = -1.0 if mirrored else 1.0  # trig(m ψ) = trig(sign·mφ + shift)
        cos_i, sin_i = position[(rho, m, "cos")], position[(rho, m, "sin")]
        if kind == "cos":  # cos(sign·mφ + shift) = cos(shift) cos mφ − sign·sin(shift) sin mφ
            d[cos_i, b], d[sin_i, b] = math.cos(shift), -sign * math.sin(shift)
        else:  # sin(sign·mφ + shift) = sin(shift) cos mφ + sign·cos(shift) sin mφ
            d[cos_i, b], d[sin_i, b] = math.sin(shift), sign * math.cos(shift)
    return d


def steered(group, k):
    n, _ = parse(group)
    return k > 1 and 4 % n != 0


@functools.lru_cache(maxsize=None)
def transform_matrix(group, g, k):
    """(k², k²) matrix of T_g on a flattened k×k kernel (cached: the oracles call it per
    filter)."""
    if steered(group, k):
        b = basis(k)
        return b @ coefficient_action(group, g, k) @ np.linalg.pinv(b)
    mat = element(group, g)[0]
    x, y = _coordinates(k)
    src = np.linalg.inv(mat) @ np.stack([x, y])
    c = (k - 1) / 2
    rows, cols = np.rint(c - src[1]).astype(int), np.rint(src[0] + c).astype(int)
    out = np.zeros((k * k, k * k))
    out[np.arange(k * k), rows * k + cols] = 1.0
    return out


def transform(w, g, group):
    """T_g on the first two axes of w."""
    k = w.shape[0]
    flat = w.reshape(k * k, -1)
    return (transform_matrix(group, g, k) @ flat).reshape(w.shape)


def lift_dense(w, group):
    """(k, k, Ci, F) → (k, k, Ci, F·|G|), output channel f·|G| + g = T_g(w[..., f])."""
    n = order(group)
    k, _, ci, f = w.shape
    out = np.zeros((k, k, ci, f * n))
    for g in range(n):
        out[:, :, :, g::n] = transform(w, g, group)
    return out


def group_dense(w, group):
    """(k, k, Ci·|G|, F) → (k, k, Ci·|G|, F·|G|): filter (o, g) on input (c, h) is
    T_g(w[:, :, c·|G| + P[g][h], o])."""
    n = order(group)
    p = table(group)
    k, _, cig, f = w.shape
    out = np.zeros((k, k, cig, f * n))
    for g in range(n):
        moved = transform(w, g, group)
        for h in range(n):
            out[:, :, h::n, g::n] = moved[:, :, p[g][h]::n, :]
    return out


def dense_vjp(d_dense, w_shape, group, lifting):
    """dw of `lift_dense` / `group_dense` (both linear): the transposed maps, summed."""
    n = order(group)
    k = w_shape[0]
    dw = np.zeros(w_shape)
    for g in range(n):
        back = transform_matrix(group, g, k).T
        if lifting:
            part = d_dense[:, :, :, g::n]
            dw += (back @ part.reshape(k * k, -1)).reshape(part.shape)
            continue
        p = table(group)
        for h in range(n):
            part = d_dense[:, :, h::n, g::n]
            dw[:, :, p[g][h]::n, :] += (back @ part.reshape(k * k, -1)).reshape(part.shape)
    return dw
