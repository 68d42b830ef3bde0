"""E4Conv2D's whole computation by bands of rows on jax's CPU (imported by
`keras_convx.ops._jax` only): `fused_e4` is `ops.e4.e4_apply` at stride 1 as one custom VJP
that keeps only the layer's input (and per-image statistics) for its backward pass.

Forward pass: the group norm's statistics over the whole image (one pass of `x @ reduce`),
then one band of `rows` output rows at a time: the band's reduced map, normalised features
and per-pixel kernels, its encoded rows (`x @ encoder`, the 2p rows above carried from the
previous band) and their aggregation. Image-sized: x's padded copy, the reduced map (float32,
for the statistics, before the bands) and y (allocated for whole bands, then sliced).

Backward pass, two passes over the bands (the group norm's input gradient
dt = σ⁻¹·(dû − mean(dû) − û·mean(dû·û)), dû = γ·dz, needs two sums over the whole image
per image and group before all of it is known):
1. every band remade; the kernels' cotangent, the encoded map's (its halo rows carried to
   the next band), the generator's and the encoder's weight gradients, γ's and β's, the two
   sums, and the part σ⁻¹·dû of dt through the reduction. Each row of x's gradient is
   written once here, unpadded: its part through the encoder is final once the next band
   starts below it, and its part through the reduction for the rows above the band's own
   comes from the previous bands (`tail`, p rows);
2. the rest of dt, −a·t + c per image and channel (t = x @ reduce remade, a = σ⁻²·mean(dû·û),
   c = σ⁻¹·(σ⁻¹·μ·mean(dû·û) − mean(dû))), added through the reduction band by band.
Image-sized in the backward pass: x's and dy's padded copies and x's gradient (with 2p
spare rows and those completing the last band).
Measured (XLA temp bytes and `train_on_batch` of one layer or four after a 1×1 stem, batch
8, k 5, 8–32 p4 fields, 32–128 px, 2-core CPU; benchmarks/RESULTS.md, seventh and eleventh
passes): the memory 1.04–1.35× a GroupConv2D's, four layers 1.04–1.08× (the step-by-step
path 1.84–2.18×; 1.44–1.59× when pass 1 kept dz, float32 and image-sized, x's gradient was
padded and the loop buffers were plain zeros), for −2 to +19% time against that version.
Remaking the kernels' cotangent in pass 2 instead held 1.24–1.39× but took +29–54% time.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def zeros_after(shape, dtype, after):
    """Zeros that XLA makes only once `after` exists: 0 · after's first element (0 where that
    is not finite or `after` is empty).

    A plain `jnp.zeros` is a constant: XLA merges it across the layers of a network and makes
    each layer's copy of it (a loop's buffer) at the start of the step, so that an image-sized
    buffer per layer is held through the whole forward pass (four fused E4 layers at 64 px:
    55 MB of temp bytes, 35 MB with these)."""
    if after.size == 0:
        return jnp.zeros(shape, dtype)
    first = after[(0,) * after.ndim].astype(dtype)
    return jnp.full(shape, jnp.where(jnp.isfinite(first), first * 0, 0), dtype)


def pad_after(x, widths, after=None):
    """`jnp.pad(x, widths)` with zeros, made once `after` exists (`zeros_after`), if given. A
    backward pass's pad of a saved input equal to its forward pass's would be that one, merged
    by XLA and held from the forward pass until then, one per layer."""
    zero = jnp.zeros((), x.dtype) if after is None else zeros_after((), x.dtype, after)
    return lax.pad(x, zero, [(lo, hi, 0) for lo, hi in widths])


def band_products(vp, kernels, k, h, w):
    """Σ_s vp[rows i.., cols j..] · kernels[..., s, :]: one band of the stride-1 aggregation
    over its padded features `vp` (B, h+2p, w+2p, M, A)."""
    out = None
    for i in range(k):
        for j in range(k):
            term = vp[:, i:i + h, j:j + w] * kernels[:, :, :, i * k + j, None, :]
            out = term if out is None else out + term
    return out


def band(x, r0, size):
    """Rows r0 … r0 + size of x (axis 1), r0 traced."""
    return lax.dynamic_slice_in_dim(x, r0, size, axis=1)


def band_cotangents(vb, kernels, g, k, dvb):
    """The backward pass of `band_products` for one band's cotangent `g` (B, rows, w, M, A):
    (`dvb` plus the padded features' cotangent, the kernels' cotangent (B, rows, w, k²·A))."""
    rows, width = g.shape[1:3]
    dkernels = []
    for i in range(k):
        for j in range(k):
            dvb = dvb.at[:, i:i + rows, j:j + width].add(g * kernels[:, :, :, i * k + j, None, :])
            dkernels.append(jnp.sum(g * vb[:, i:i + rows, j:j + width], axis=3))
    return dvb, jnp.stack(dkernels, axis=3).reshape(*g.shape[:3], -1)


@functools.lru_cache(maxsize=64)
def fused_e4(k, rows, epsilon):
    """The jitted custom-VJP op `(x, reduce, gamma, beta, block, encoder) → y` for kernel size
    `k`, bands of `rows` output rows and the group norm's `epsilon`."""
    p, f32 = (k - 1) // 2, jnp.float32

    def padded(x, after=None):
        """(x with k − 1 halo rows/columns and padded to whole bands, bands); made once `after`
        exists, if given (`pad_after`)."""
        extra = -x.shape[1] % rows
        widths = ((0, 0), (p, p + extra), (p, p), (0, 0))
        return pad_after(x, widths, after), (x.shape[1] + extra) // rows

    def own_rows(xp, r0, width):  # the band's rows of x, without the halo
        return band(xp, r0 + p, rows)[:, :, p:p + width]

    def encode(xs, encoder, block):  # (B, r, W, C) → (B, r, W, M, A)
        a = block.shape[-1] // (k * k)
        return (xs @ encoder).reshape(*xs.shape[:-1], encoder.shape[-1] // a, a)

    def next_band(xp, encoder, block, r0, above):
        """Encoded rows r0 … r0 + rows + 2p of the padded map: `above` (the first 2p, from the
        previous band) and the `rows` new ones."""
        return jnp.concatenate([above, encode(band(xp, r0 + 2 * p, rows), encoder, block)], 1)

    def per_channel(a, n):  # (B, groups, 1 or n) → (B, 1, 1, groups·n)
        return jnp.broadcast_to(a, (*a.shape[:2], n)).reshape(a.shape[0], 1, 1, -1)

    def statistics(x, reduce, gamma):
        """Per image and group: mean and 1/σ of the reduced map (biased variance, E[t²] − μ²,
        as `ops.group.group_norm_relu_reference`)."""
        groups, n = gamma.shape[0], reduce.shape[-1] // gamma.shape[0]
        t = (x @ reduce).astype(f32)

        def group_mean(u):
            return jnp.mean(u, axis=(1, 2)).reshape(-1, groups, n).mean(-1)

        mean, square = group_mean(t), group_mean(t * t)
        return mean, lax.rsqrt(jnp.maximum(square - mean * mean, 0.0) + epsilon)

    def generator(xs, reduce, gamma, beta, mean, inv):
        """(features without the ones column, the affine map's output z, the normalised û)."""
        n = reduce.shape[-1] // gamma.shape[0]
        mean, inv = per_channel(mean[:, :, None], n), per_channel(inv[:, :, None], n)
        u = ((xs @ reduce).astype(f32) - mean) * inv
        z = u * per_channel(gamma[None], n) + per_channel(beta[None], n)
        return jnp.maximum(z, 0).astype(xs.dtype), z, u

    def kernels_of(features, block):
        b, h, w, _ = features.shape
        return (features @ block[:-1] + block[-1]).reshape(b, h, w, k * k, -1)

    def forward(x, reduce, gamma, beta, block, encoder):
        height, width = x.shape[1:3]
        mean, inv = statistics(x, reduce, gamma)
        xp, count = padded(x)

        def body(b, carry):
            y, above = carry
            r0 = b * rows
            vb = next_band(xp, encoder, block, r0, above)
            features = generator(own_rows(xp, r0, width), reduce, gamma, beta, mean, inv)[0]
            out = band_products(vb, kernels_of(features, block), k, rows, width)
            return lax.dynamic_update_slice_in_dim(y, out, r0, axis=1), vb[:, rows:]

        first = encode(xp[:, :2 * p], encoder, block)
        # made once the statistics exist, just before the loop (waiting on x instead: four
        # layers at 64 px 38.9 against 35.2 MB of temp bytes; `first` is empty at k = 1)
        y = zeros_after((x.shape[0], count * rows, width, *first.shape[3:]), x.dtype, inv)
        y = lax.fori_loop(0, count, body, (y, first))[0][:, :height]
        return y, (x, reduce, gamma, beta, block, encoder, mean, inv)

    @jax.custom_vjp
    def op(x, reduce, gamma, beta, block, encoder):
        return forward(x, reduce, gamma, beta, block, encoder)[0]

    def backward(saved, dy):
        x, reduce, gamma, beta, block, encoder, mean, inv = saved
        (batch, height, width, _), n = x.shape, reduce.shape[-1] // gamma.shape[0]
        xp, count = padded(x, dy)  # anew, not the forward pass's held until here
        dy = jnp.pad(dy, ((0, 0), (0, count * rows - height), (0, 0), (0, 0), (0, 0)))
        gamma_c, inv_c = per_channel(gamma[None], n), per_channel(inv[:, :, None], n)

        def through_encoder(xs, dvb):
            """(x's cotangent, the encoder's) from the final cotangent rows `dvb` of rows xs."""
            dvb = dvb.reshape(*dvb.shape[:3], encoder.shape[-1])
            return dvb @ encoder.T, jnp.einsum("bhwc,bhwo->co", xs, dvb, preferred_element_type=f32)

        def first_pass(b, carry):
            dxr, dencoder, dblock, dgamma, dbeta, dreduce, sums, above, below, tail = carry
            r0 = b * rows
            vb = next_band(xp, encoder, block, r0, above)
            xs = own_rows(xp, r0, width)
            features, z, u = generator(xs, reduce, gamma, beta, mean, inv)
            dvb, dkernels = band_cotangents(vb, kernels_of(features, block), band(dy, r0, rows), k,
                                            jnp.zeros_like(vb).at[:, :2 * p].set(below))
            dz = jnp.where(z > 0, (dkernels @ block[:-1].T).astype(f32), 0.0)
            du = dz * gamma_c
            # the part σ⁻¹·dû of the reduced map's cotangent (the rest needs the image-wide
            # sums, after the bands), through the reduction to x's own rows
            dt = (inv_c * du).astype(x.dtype)
            # rows r0 … r0 + rows of the padded map's cotangent are final (later bands start
            # below them): x's gradient through the encoder and the reduction written once;
            # the reduction's part of the first p of them came from earlier bands (`tail`)
            dxb, de = through_encoder(band(xp, r0, rows), dvb[:, :rows])
            reduced = jnp.concatenate([tail, (dt @ reduce.T).astype(x.dtype)], axis=1)
            dxr = lax.dynamic_update_slice_in_dim(
                dxr, (dxb[:, :, p:p + width] + reduced[:, :rows]).astype(x.dtype), r0, axis=1)
            ones = jnp.ones((*features.shape[:3], 1), features.dtype)
            dblock = dblock + jnp.einsum("bhwf,bhwo->fo", jnp.concatenate([features, ones], -1),
                                         dkernels, preferred_element_type=f32)
            sums = sums + jnp.stack([du.sum((1, 2)), (du * u).sum((1, 2))])
            return (dxr, dencoder + de, dblock, dgamma + (dz * u).sum((0, 1, 2)),
                    dbeta + dz.sum((0, 1, 2)),
                    dreduce + jnp.einsum("bhwc,bhwo->co", xs, dt, preferred_element_type=f32),
                    sums, vb[:, rows:], dvb[:, rows:], reduced[:, rows:])

        first = encode(xp[:, :2 * p], encoder, block)
        channels = reduce.shape[-1]
        dxr, dencoder, dblock, dgamma, dbeta, dreduce, sums, _, below, tail = lax.fori_loop(
            0, count, first_pass, (
                zeros_after((batch, xp.shape[1], width, x.shape[-1]), x.dtype, dy),
                jnp.zeros(encoder.shape, f32), jnp.zeros(block.shape, f32),
                jnp.zeros(channels, f32), jnp.zeros(channels, f32),
                jnp.zeros(reduce.shape, f32), jnp.zeros((2, batch, channels), f32), first,
                jnp.zeros_like(first), jnp.zeros((batch, p, width, x.shape[-1]), x.dtype)))
        # the last 2p rows' cotangent (the bottom halo, and real rows when no padding row
        # completes the last band) is final after the loop
        dxb, de = through_encoder(xp[:, count * rows:], below)
        tail = jnp.pad(tail, ((0, 0), (0, p), (0, 0), (0, 0)))
        dxr = lax.dynamic_update_slice_in_dim(
            dxr, (dxb[:, :, p:p + width] + tail).astype(x.dtype), count * rows, axis=1)
        # the rest of the reduced map's cotangent, dt = σ⁻¹·(dû − mean(dû) − û·mean(dû·û)):
        # −a·t + c per image and channel (û = σ⁻¹·(t − μ), a = σ⁻²·mean(dû·û),
        # c = σ⁻¹·(σ⁻¹·μ·mean(dû·û) − mean(dû))), means over each image's group (H·W pixels
        # × n channels); x's gradient through the reduction added band by band
        means = sums.reshape(2, batch, -1, n).sum(-1) / (height * width * n)
        m1, m2 = (per_channel(m[:, :, None], n) for m in means)
        a = inv_c * inv_c * m2
        c = inv_c * (inv_c * per_channel(mean[:, :, None], n) * m2 - m1)

        def second_pass(b, carry):
            dxr, dreduce = carry
            r0 = b * rows
            xs = own_rows(xp, r0, width)
            dt = (c - a * (xs @ reduce).astype(f32)).astype(x.dtype)
            rows_p = (band(dxr, r0 + p, rows) + dt @ reduce.T).astype(x.dtype)
            return (lax.dynamic_update_slice_in_dim(dxr, rows_p, r0 + p, axis=1),
                    dreduce + jnp.einsum("bhwc,bhwo->co", xs, dt, preferred_element_type=f32))

        dxr, dreduce = lax.fori_loop(0, count, second_pass, (dxr, dreduce))
        dx = dxr[:, p:p + height]

        def like(gradient, weight):  # per-channel sums back to the weight's (groups, 1 or n)
            gradient = gradient.reshape(weight.shape[0], n)
            if weight.shape[1] == 1:
                gradient = gradient.sum(-1, keepdims=True)
            return gradient.astype(weight.dtype)

        return (dx, dreduce.astype(reduce.dtype), like(dgamma, gamma), like(dbeta, beta),
                dblock.astype(block.dtype), (dencoder + de).astype(encoder.dtype))

    op.defvjp(forward, backward)
    return jax.jit(op)
