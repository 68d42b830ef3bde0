"""E4's bands of rows on torch's CPU (imported by `keras_convx.ops._torch` only): the band
loops its planar generation + aggregation shares, and `fused_e4`, the whole of
`ops.e4.e4_apply` at stride 1 as one autograd Function that keeps only the layer's input and
per-image statistics for its backward pass.

Everything runs with the image axes innermost ("planar": (B, channels, pixels) per matrix
product, (B, M, A, rows, W) per aggregation), where a window position's kernel plane
broadcasts over the M fields as an outer axis (`ops._torch._PlanarGenerateAggregate` has the
measurements). The matrix products are one `torch.bmm` per band over the images.

`fused_e4`, per band of rows:
- forward: the reduced map `x @ reduce` of the whole image (float32) and the group norm's
  statistics from it, then each band's normalised features (with a row of ones: the bias,
  rounded once as in the reference's product), its per-pixel kernels, its encoded rows
  (`x @ encoder` over the band and its 2p halo rows, zero-padded at the image's edges) and
  their aggregation; the reduced map is dropped after the bands;
- backward, one pass: every band remade; the kernels' and the encoded rows' cotangents, x's
  gradient through the encoder (added into one float32 accumulator, the halo rows from both
  bands), the weight gradients, Σ dû and Σ dû·û per image and group, and the first term of
  the reduced map's cotangent, σ⁻¹·dû, through the reduction. The rest of that cotangent
  needs the two sums over the whole image; it is added after the bands from x's Gram matrix
  and one C×C product per image (`_reduction_remainder`), so no band is remade twice and no
  image-sized cotangent is kept (tensorflow's fused layer does the same; jax's makes a second
  pass).
Measured (benchmarks/RESULTS.md, ninth pass; one layer after a 1×1 stem, batch 8, k 5): the
step's peak 1.36 / 1.13 / 1.00× a GroupConv2D's at 32 / 64 / 128 px (8 fields; step by step
3.1 / 1.8 / 1.5×), four layers 1.09 / 1.00× at 64 / 128 px, for −9 to +19% time at 64–128 px
and up to +40% at 32 px.
"""

import torch


def windows(k, strides, rows, width):
    """(s, rows-slice, cols-slice) of the k² windows of a padded plane, for output rows
    `rows` (a range) and `width` output columns."""
    (sh, sw), r0, r1 = strides, rows.start, rows.stop
    for i in range(k):
        for j in range(k):
            yield (i * k + j, slice(r0 * sh + i, (r1 - 1) * sh + i + 1, sh),
                   slice(j, (width - 1) * sw + j + 1, sw))


def aggregate_band(out, vq, kernels, k, strides, rows):
    """out += Σ_s window_s(vq) · kernels[:, s]: output rows `rows` (a range) of the planar
    aggregation, in place (`addcmul_`: one pass per window, no temporary product). `vq`: the
    padded planar features (B, M, A, ·, ·) the windows index; `kernels` (B, k², A, rows, W)."""
    for s, ri, cj in windows(k, strides, rows, out.shape[-1]):
        out.addcmul_(vq[:, :, :, ri, cj], kernels[:, s, None])


def aggregate_band_backward(dvq, vq, kernels, g, k, strides, rows):
    """The backward pass of `aggregate_band` for the rows' cotangent `g` (B, M, A, rows, W):
    adds the features' cotangent into `dvq` (indexed as `vq`) and returns the kernels'
    (B, k², A, rows, W)."""
    dkernels = torch.empty_like(kernels)
    for s, ri, cj in windows(k, strides, rows, g.shape[-1]):
        dvq[:, :, :, ri, cj].addcmul_(g, kernels[:, s, None])
        torch.sum(g * vq[:, :, :, ri, cj], dim=1, out=dkernels[:, s])
    return dkernels


def product(a, b):
    """a @ b for a weight matrix `a` (n, m) and per-image columns `b` (B, m, cols), or for
    per-image `a` (B, n, m) and a weight matrix `b`: one `torch.bmm` over the images."""
    if a.dim() == 2:
        a = a.expand(b.shape[0], -1, -1)
    if b.dim() == 2:
        b = b.expand(a.shape[0], -1, -1)
    return torch.bmm(a, b)


def weight_gradient(a, b):
    """Σ over images of a @ b, in float32 (one rounding for low-precision inputs)."""
    return torch.bmm(a.float(), b.float()).sum(0)


class _FusedE4(torch.autograd.Function):
    """`fused_e4`'s forward and backward passes (see the module's docstring). Each band runs in
    a function of its own, so that its tensors are freed before the next band makes its own
    (a loop's variables would hold the last band's until they are bound again)."""

    @staticmethod
    def forward(ctx, x, reduce, gamma, beta, block, encoder, k, epsilon, rows, bands):
        batch, height, width, _ = x.shape
        layout = _Layout(x, reduce, gamma, block, encoder, k)
        t = product(reduce.t(), layout.columns(x, 0, height)).float()
        var, mean = _moments(t.view(batch, layout.groups, -1))
        inv = torch.rsqrt(var + epsilon)
        norm = layout.normalisation(gamma, beta, mean, inv)
        y = x.new_zeros((batch, layout.fields, layout.slots, height, width))

        def forward_band(band):
            features = layout.features(norm(t[:, :, band.start * width:band.stop * width])[0],
                                       x.dtype)
            kernels = layout.kernels(features, block, len(band))
            del features
            bands.forward(y[:, :, :, band.start:band.stop], layout.encoded(x, encoder, band),
                          kernels, k)

        for r0 in range(0, height, rows):
            forward_band(range(r0, min(height, r0 + rows)))
        ctx.save_for_backward(x, reduce, gamma, beta, block, encoder, mean, inv)
        ctx.k, ctx.rows, ctx.bands = k, rows, bands
        return y.permute(0, 3, 4, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        x, reduce, gamma, beta, block, encoder, mean, inv = ctx.saved_tensors
        k, rows = ctx.k, ctx.rows
        (batch, height, width, channels), p = x.shape, (k - 1) // 2
        layout = _Layout(x, reduce, gamma, block, encoder, k)
        norm = layout.normalisation(gamma, beta, mean, inv)
        f32 = {"dtype": torch.float32, "device": x.device}
        # x's gradient only when asked for (not for a model's first layer)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.zeros((batch, height * width, channels), **f32)
        dreduce, dencoder = torch.zeros(reduce.shape, **f32), torch.zeros(encoder.shape, **f32)
        dblock, dgamma = torch.zeros(block.shape, **f32), torch.zeros(reduce.shape[1], **f32)
        dbeta, sums = torch.zeros_like(dgamma), torch.zeros((2, batch, reduce.shape[1]), **f32)
        inv_c, gamma_c = layout.per_image(inv), layout.per_weight(gamma)

        def backward_band(band):  # the band remade, its cotangents added up
            xs = layout.columns(x, band.start, band.stop)
            z, u = norm(product(reduce.t(), xs).float())
            features = layout.features(z, x.dtype)
            kernels = layout.kernels(features, block, len(band))
            # the band's cotangent (B, M, A, rows, W): a copy of one band of dy at a time
            g = dy[:, band.start:band.stop].permute(0, 3, 4, 1, 2).contiguous()
            dvq, dkernels = ctx.bands.backward(layout.encoded(x, encoder, band), kernels, g, k)
            del g, kernels
            dkernels = dkernels.view(batch, -1, len(band) * width)
            dblock.add_(weight_gradient(features, dkernels.transpose(1, 2)))
            del features
            dz = product(block[:-1], dkernels).float().mul_(z > 0)
            del dkernels, z
            # x's gradient through the encoder: the band's rows and its halo rows inside the image
            lo, hi = max(band.start - p, 0), min(band.stop + p, height)
            top = p - (band.start - lo)
            dv = dvq[:, :, :, top:top + hi - lo, p:p + width].reshape(batch, -1, (hi - lo) * width)
            del dvq
            if dx is not None:
                dx[:, lo * width:hi * width] += product(dv.transpose(1, 2), encoder.t())
            dencoder.add_(weight_gradient(layout.columns(x, lo, hi), dv.transpose(1, 2)))
            del dv
            dgamma.add_((dz * u).sum((0, 2)))
            dbeta.add_(dz.sum((0, 2)))
            du = dz.mul_(gamma_c)
            sums[0] += du.sum(-1)
            sums[1] += (du * u).sum(-1)
            # the reduced map's cotangent's first term, σ⁻¹·dû, through the reduction
            dt = du.mul_(inv_c).to(x.dtype)
            if dx is not None:
                dx[:, band.start * width:band.stop * width] += product(dt.transpose(1, 2),
                                                                       reduce.t())
            dreduce.add_(weight_gradient(xs, dt.transpose(1, 2)))

        for r0 in range(0, height, rows):
            backward_band(range(r0, min(height, r0 + rows)))
        # mean(dû) and mean(dû·û) over each image's group (H·W pixels × n channels)
        count = height * width * layout.per_group
        m1, m2 = sums.view(2, batch, layout.groups, -1).sum(-1) / count
        _reduction_remainder(x, reduce, layout.per_image(mean), inv_c, layout.per_image(m1),
                             layout.per_image(m2), dx, dreduce)
        return (None if dx is None else dx.view(x.shape).to(x.dtype), dreduce.to(reduce.dtype),
                layout.like(dgamma, gamma), layout.like(dbeta, beta), dblock.to(block.dtype),
                dencoder.to(encoder.dtype), None, None, None, None)


def _moments(t):
    """(variance, mean) over the last axis, two passes: `torch.var_mean`'s CPU kernel (one
    Welford pass) took 2.9 ms for a 64 px image's reduced map (8 × 32 × 4096 values), this
    0.2 ms."""
    mean = t.mean(-1)
    return (t - mean[..., None]).square_().mean(-1), mean


def _reduction_remainder(x, reduce, mean, inv, m1, m2, dx, dreduce):
    """Adds the rest of x's and the reduction's gradients through the group norm into `dx`
    (B, pixels, C; None: not wanted) and `dreduce` (C, C_r·|G|), both float32, without
    remaking the reduced map.

    The reduced map's cotangent is dt = σ⁻¹·(dû − m1 − û·m2) (m1 = mean(dû), m2 = mean(dû·û)
    per image and group; û = σ⁻¹·(t − μ), t = x @ reduce); the bands added σ⁻¹·dû. The rest is
    −a·t + c per image and channel, a = σ⁻²·m2, c = a·μ − σ⁻¹·m1: through the reduction
    −x @ (reduce·diag(a)·reduceᵀ) + c @ reduceᵀ for x, and −(xᵀx) @ reduce·diag(a) + (Σ x) ⊗ c
    for the reduction: one image-wide product with a C×C matrix per image and one Gram matrix
    per image. `mean`, `inv`, `m1`, `m2`: (B, C_r·|G|, 1)."""
    flat = x.reshape(x.shape[0], -1, x.shape[3]).float()
    reduce = reduce.float()
    a = (inv * inv * m2).squeeze(-1)  # (B, C_r·|G|)
    c = a * mean.squeeze(-1) - (inv * m1).squeeze(-1)
    if dx is not None:
        dx.baddbmm_(flat, (reduce * a[:, None, :]) @ reduce.t(), alpha=-1)
        dx += (c @ reduce.t())[:, None, :]
    gram = torch.bmm(flat.transpose(1, 2), flat)
    dreduce -= (gram @ reduce * a[:, None, :]).sum(0)
    dreduce += flat.sum(1).t() @ c


class _Layout:
    """The sizes of one fused call and the steps both passes remake per band."""

    def __init__(self, x, reduce, gamma, block, encoder, k):
        self.k, self.width, self.height = k, x.shape[2], x.shape[1]
        self.groups = gamma.shape[0]
        self.per_group = reduce.shape[1] // self.groups
        self.slots = block.shape[1] // (k * k)
        self.fields = encoder.shape[1] // self.slots

    def columns(self, x, r0, r1):
        """Rows r0 … r1 of channels_last `x` (B, H, W, C) as (B, C, pixels): a transposed view."""
        flat = x.view(x.shape[0], -1, x.shape[3])
        return flat[:, r0 * self.width:r1 * self.width].transpose(1, 2)

    def per_image(self, a):
        """(B, groups) values per image and group → (B, C_r·|G|, 1), one per reduced channel."""
        return a.repeat_interleave(self.per_group, dim=1)[..., None]

    def per_weight(self, w):
        """γ or β (groups, 1 or n) → (C_r·|G|, 1) float32, one per reduced channel."""
        return w.float().expand(self.groups, self.per_group).reshape(-1, 1)

    def normalisation(self, gamma, beta, mean, inv):
        """A function (B, C_r·|G|, pixels) float32 reduced rows → (z = γ·û + β, û)."""
        mean_c, inv_c = self.per_image(mean), self.per_image(inv)
        gamma_c, beta_c = self.per_weight(gamma), self.per_weight(beta)

        def normalise(t):
            u = (t - mean_c).mul_(inv_c)
            return torch.addcmul(beta_c, u, gamma_c), u

        return normalise

    def features(self, z, dtype):
        """relu(z) cast to `dtype`, with a last row of ones (the bias' row of `block`)."""
        features = z.new_empty((z.shape[0], z.shape[1] + 1, z.shape[2]), dtype=dtype)
        features[:, :-1].copy_(z).clamp_min_(0)  # cast, then relu: no band-sized temporary
        features[:, -1].fill_(1)
        return features

    def kernels(self, features, block, rows):
        """(B, k², A, rows, W) per-pixel kernels: `block`ᵀ @ features."""
        band = product(block.t(), features)
        return band.view(band.shape[0], self.k * self.k, self.slots, rows, self.width)

    def encoded(self, x, encoder, band):
        """The planar encoded rows band.start − p … band.stop + p, (B, M, A, rows + 2p, W + 2p),
        zero where they fall outside the image."""
        p = (self.k - 1) // 2
        lo, hi = max(band.start - p, 0), min(band.stop + p, self.height)
        v = product(encoder.t(), self.columns(x, lo, hi))
        v = v.view(x.shape[0], self.fields, self.slots, hi - lo, self.width)
        pads = (p, p, p - (band.start - lo), band.stop + p - hi)
        return torch.nn.functional.pad(v, pads)

    def like(self, gradient, weight):
        """Per-channel sums back to γ's / β's shape (groups, 1 or n)."""
        gradient = gradient.view(self.groups, self.per_group)
        if weight.shape[1] == 1:
            gradient = gradient.sum(-1, keepdim=True)
        return gradient.to(weight.dtype)


class EagerBands:
    """One stride-1 band's aggregation and its backward pass, in eager torch (`fused_e4`'s
    default; `forward(out, vq, kernels, k)` writes into `out`, `backward(vq, kernels, g, k)`
    returns the cotangents of `vq` and of the kernels)."""

    @staticmethod
    def forward(out, vq, kernels, k):
        aggregate_band(out, vq, kernels, k, (1, 1), range(out.shape[3]))

    @staticmethod
    def backward(vq, kernels, g, k):
        dvq = torch.zeros_like(vq)
        return dvq, aggregate_band_backward(dvq, vq, kernels, g, k, (1, 1), range(g.shape[3]))


def fused_e4(x, reduce, gamma, beta, block, encoder, k, epsilon, rows, bands=EagerBands):
    """E4's output (B, H, W, M, A) from channels_last `x` at stride 1 (`ops.e4.e4_apply`), by
    bands of `rows` rows, each band's aggregation by `bands` (see `EagerBands`)."""
    return _FusedE4.apply(x, reduce, gamma, beta, block, encoder, k, epsilon, rows, bands)
