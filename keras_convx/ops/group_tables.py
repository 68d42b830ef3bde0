"""Static tables of the rotation groups cN and the dihedral groups dN (p4 = c4, p4m = d4).

Everything here is NumPy, computed once per configuration and cached.

Elements. cN has the N rotations `r^a` (angle `2πa/N`, counter-clockwise, `np.rot90`'s
direction for a = N/4); dN adds the N reflections `r^a·m`, where `m` mirrors the columns
(`w[:, ::-1]`). Element g < N is `r^g`; element N + j is `r^(−j)·m`. For N = 4 these are
the p4/p4m elements and tables of the spec (element 4 + j is `rot90^(3−j)(wᵀ)`), so `"c4"`
gives the same numbers as `"p4"` and `"d4"` as `"p4m"`, bit for bit.

Kernels. An element whose angle is a multiple of 90° moves a k×k kernel exactly, as a
permutation of its k² positions. The other angles rotate it through a steerable basis
(Weiler & Cesa, *General E(2)-Equivariant Steerable CNNs*, 2019): circular harmonics
`cos(mφ)`, `sin(mφ)` times Gaussian rings of radius ρ = 0, 1, ..., (k−1)/2 (width 0.6 px,
0.4 on the outermost ring, 0.6 at the centre too), with the band limit of escnn's
`_manual_fco2` rule: m = 0 at the centre, |m| ≤ 1 on the outermost ring,
|m| ≤ 2ρ − ((ρ + 1) mod 2) on the rings between (4, 9 and 16 functions for k = 3, 5, 7: a
stored k×k kernel keeps that many degrees of freedom). A higher limit (|m| ≤ 2ρ everywhere) aliases on the grid: it
doubled a c8 network's change under 45° rotations of digits. A kernel is
projected onto that basis (least squares) and rotated exactly there. In a group with such
angles (N not dividing 4, k > 1) every element uses the projected kernel, so the kernels of
all elements form one exact group orbit, and element `g + N/gcd(N, 4)` is element g turned
by 360°/gcd(N, 4) (`rot90^(4/gcd(N, 4))`): the 90° subgroup stays exact on the pixel grid. Only the `q = N / gcd(N, 4)`
representative rotations (times the mirror, for dN) are dense k²×k² maps; the other
elements are permutations of their outputs.
"""

import functools
import math
import re

import numpy as np

# p4 and p4m, the names of the spec, are c4 and d4.
ALIASES = {"p4": (4, False), "p4m": (4, True)}
# The accepted forms (for messages and docs): "cN" and "dN" stand for any 1 <= N <= MAX_N.
GROUPS = ("p4", "p4m", "cN", "dN")
MAX_N = 256  # |G|² tables; a typo such as "c100000" would otherwise build billions of entries
_PATTERN = re.compile(r"^([cd])(\d+)$")


def check_group(group):
    """The normalised group name (`"p4"`, `"p4m"`, `"c8"`, `"d3"`, ...); ValueError otherwise."""
    if isinstance(group, str):
        name = group.strip().lower()
        if name in ALIASES:
            return name
        match = _PATTERN.match(name)
        if match:
            if not 1 <= int(match.group(2)) <= MAX_N:
                raise ValueError(f"Expected group 'cN' or 'dN' with N >= 1 and N <= {MAX_N}. "
                                 f"Received: group={group!r}")
            return f"{match.group(1)}{int(match.group(2))}"
    raise ValueError(
        "Expected group to be 'p4', 'p4m', 'cN' (N rotations) or 'dN' (N rotations and N "
        f"reflections) with N >= 1, e.g. 'c8' or 'd8'. Received: group={group!r}"
    )


@functools.lru_cache(maxsize=None)
def group_spec(group):
    """(N, mirrored): the number of rotations and whether the group has the reflections."""
    group = check_group(group)
    if group in ALIASES:
        return ALIASES[group]
    return int(group[1:]), group[0] == "d"


def group_order(group):
    """|G|: N for cN (4 for p4), 2N for dN (8 for p4m)."""
    n, mirrored = group_spec(group)
    return 2 * n if mirrored else n


def element(group, g):
    """(a, m): element g is `r^a · m^m` (rotation by 2πa/N after the mirror if m = 1)."""
    n, _ = group_spec(group)
    return (g, 0) if g < n else ((-(g - n)) % n, 1)


def element_index(group, a, m):
    """Inverse of `element`."""
    n, _ = group_spec(group)
    return a % n if not m else n + (-a) % n


def compose(group, g, h):
    """Index of g·h (apply h, then g): `r^a1 m^m1 r^a2 m^m2 = r^(a1 ± a2) m^(m1 + m2)`."""
    a1, m1 = element(group, g)
    a2, m2 = element(group, h)
    return element_index(group, a1 + (-a2 if m1 else a2), m1 ^ m2)


def inverse(group, g):
    a, m = element(group, g)
    return g if m else element_index(group, -a, 0)


def exact_elements(group):
    """The elements that act exactly on the pixel grid (angles that are multiples of 90°)."""
    n, _ = group_spec(group)
    return [g for g in range(group_order(group)) if (element(group, g)[0] * 4) % n == 0]


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=None)
def group_permutation(group):
    """(|G|, |G|) int array P: output element g reads input element `P[g, h] = g⁻¹·h` at slot h."""
    order = group_order(group)
    return _readonly([[compose(group, inverse(group, g), h) for h in range(order)] for g in range(order)])


# ------------------------------------------------------------------------------ kernels


def _steered(group, k):
    """True when the group has angles off the 90° grid and the kernel is larger than 1×1."""
    n, _ = group_spec(group)
    return k > 1 and 4 % n != 0


def grid_points(k):
    """The k×k pixel centres as flat (x, y) arrays: x right, y up, origin at the centre."""
    c = (k - 1) / 2
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    return (j - c).reshape(-1), (c - i).reshape(-1)


def band_limit(rho, outer):
    """The highest circular frequency on the ring of radius `rho` (`outer`: the last ring's)."""
    if rho == 0:
        return 0
    return 1 if rho == outer else int(2 * rho - (rho + 1) % 2)


@functools.lru_cache(maxsize=None)
def steerable_basis(k):
    """(k², B) float64 basis sampled on the k×k grid, and its continuous form.

    Returns `(basis, evaluate)` where `evaluate(x, y)` gives the (len, B) values at points
    (x right, y up, origin at the kernel's centre)."""
    radii = np.arange((k - 1) // 2 + 1, dtype=np.float64)
    terms = [(rho, m) for rho in radii for m in range(band_limit(rho, radii[-1]) + 1)]

    def evaluate(x, y):
        r, phi = np.hypot(x, y), np.arctan2(y, x)
        centre = r < 1e-9  # the angle is undefined there: the m > 0 harmonics are 0
        columns = []
        for rho, m in terms:
            width = 0.4 if rho == radii[-1] and rho > 0 else 0.6
            ring = np.exp(-0.5 * ((r - rho) / width) ** 2)
            if m:
                ring = np.where(centre, 0.0, ring)
                columns.append(ring * np.sin(m * phi))
            columns.append(ring * np.cos(m * phi))
        return np.stack(columns, axis=-1)

    return evaluate(*grid_points(k)), evaluate


@functools.lru_cache(maxsize=None)
def rotation_map(k, angle):
    """(k², k²) float64 map rotating a flattened k×k kernel by `angle` radians (counter-clockwise)
    through the steerable basis: `B(R₋θ p) · B⁺`, the projection followed by the exact rotation."""
    basis, evaluate = steerable_basis(k)
    x, y = grid_points(k)
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = evaluate(cos * x + sin * y, -sin * x + cos * y)
    return rotated @ np.linalg.pinv(basis)


def _grid_permutation(k, quarter_turns, mirror):
    positions = np.arange(k * k).reshape(k, k)
    if mirror:
        positions = positions[:, ::-1]
    return np.rot90(positions, quarter_turns).reshape(-1)


@functools.lru_cache(maxsize=None)
def kernel_maps(group, k):
    """(S·k², k²) float64 stack of the representative kernel maps, or None when every element
    is an exact grid transform (N divides 4, or k = 1).

    Map `t = r + q·m` (r < q = N/gcd(N, 4), m the mirror) takes a flattened kernel to its
    projection rotated by 2πr/N (after mirroring it if m = 1)."""
    if not _steered(group, k):
        return None
    n, mirrored = group_spec(group)
    q = n // math.gcd(n, 4)
    maps = []
    for m in range(2 if mirrored else 1):
        mirror = np.eye(k * k)[_grid_permutation(k, 0, m)]
        maps.extend(rotation_map(k, 2 * math.pi * r / n) @ mirror for r in range(q))
    return _readonly(np.concatenate(maps, axis=0))


@functools.lru_cache(maxsize=None)
def kernel_permutation(group, k):
    """(|G|, k²) int array of source rows: element g's kernel at position s is row
    `table[g, s]` of the kernel stack (the kernel itself when `kernel_maps` is None, where
    `T_g(w).flat[s] == w.flat[table[g, s]]`; else `kernel_maps @ w.flat`)."""
    n, _ = group_spec(group)
    rows = []
    for g in range(group_order(group)):
        a, m = element(group, g)
        if not _steered(group, k):
            rows.append(_grid_permutation(k, (a * 4) // n if k > 1 else 0, m))
            continue
        q = n // math.gcd(n, 4)
        turns = (a // q) * (4 // math.gcd(n, 4))
        rows.append((a % q + q * m) * k * k + _grid_permutation(k, turns, False))
    return _readonly(rows)


def stack_size(group, k):
    """Rows of the kernel stack per input row: S·k² / k² (1 when `kernel_maps` is None)."""
    maps = kernel_maps(group, k)
    return 1 if maps is None else maps.shape[0] // (k * k)


@functools.lru_cache(maxsize=None)
def lift_gather_table(group, k):
    """(k², |G|) indices into the kernel stack's rows: `table[s, g] = kernel_permutation[g, s]`."""
    return _readonly(kernel_permutation(group, k).T)


@functools.lru_cache(maxsize=None)
def group_gather_table(group, k):
    """(k², |G|_in, |G|_out) indices into the kernel stack's flattened (rows, |G|) axes.

    `table[s, h, g] = src_g(s)·|G| + P[g, h]`: the dense group kernel at position s, input
    element h, output element g is row `src_g(s)` of the stack at element `P[g, h]`.
    """
    n = group_order(group)
    src = kernel_permutation(group, k)  # (G, k²)
    p = group_permutation(group)  # (G, G)
    return _readonly(src.T[:, None, :] * n + p.T[None, :, :])  # [s, h, g]


# ------------------------------------------------------------------------------ E4 tables


@functools.lru_cache(maxsize=None)
def steering_table(group, k, slices):
    """(slices·k²·|G|,) indices steering the generator's kernels.

    The generator output, stacked (`kernel_maps`) and viewed as (slices, S·k², |G|) and
    flattened, is gathered with this table so that slot (σ, s, g) holds `T_g(κ[σ])` at s.
    """
    n = group_order(group)
    rows = stack_size(group, k) * k * k
    src = kernel_permutation(group, k)  # (G, k²)
    sigma = np.arange(slices)[:, None, None]
    s = np.arange(k * k)[None, :, None]
    g = np.arange(n)[None, None, :]
    return _readonly(((sigma * rows + src[g, s]) * n + g).reshape(-1))


@functools.lru_cache(maxsize=None)
def steered_generator_columns(group, k, slices, steering=True):
    """(k²·slices, |G|) source columns of the (stacked) generator kernel, slots ordered (s, σ).

    Row `s·slices + σ`, column g holds the stacked generator column `σ·S·k² + src_g(s)` (the
    steering folded into the weights); `steering=False` (a negative control) keeps `σ·k² + s`.
    """
    n, k2 = group_order(group), k * k
    if steering:
        cols = steering_table(group, k, slices).reshape(k2 * slices, n) // n
    else:
        sigma, s = np.divmod(np.arange(k2 * slices), k2)
        cols = np.repeat((sigma * stack_size(group, k) * k2 + s)[:, None], n, axis=1)
    return _readonly(cols[(np.arange(slices)[None, :] * k2 + np.arange(k2)[:, None]).reshape(-1)])


@functools.lru_cache(maxsize=None)
def encoder_columns(order, slices, fields_per_slice):
    """Column order taking output channel `(σ·M + m)·|G| + g` to the slot `(m, σ, g)`."""
    mm, ss, gg = np.meshgrid(np.arange(fields_per_slice), np.arange(slices), np.arange(order), indexing="ij")
    return _readonly(((ss * fields_per_slice + mm) * order + gg).reshape(-1))
