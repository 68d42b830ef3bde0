"""Maths of deeply shared filter bases (Kang & Kim, NeurIPS 2021).

A shared-basis convolution with basis kernel `B` (k, k, c_in, r) — the layer's unique filters
and a slice of a shared `FilterBasis`, concatenated — per-channel basis scale `a` and shift `b`
(the basis batch norm folded to an affine map; identity without it) and 1×1 coefficients `A`
(r, c_out) computes

    y = conv(x, B) · a + b, then the 1×1 mix y @ A        ("basis_first")
    y = conv(x, B · diag(a) · A) + b @ A                 ("kernel_first")

Both orders are exact (the convolution is linear in its kernel); which one is cheaper depends
on the shapes, see `choose_order`. Orthonormality helpers treat a kernel of any rank as the
matrix (filters, fan_in): the last axis indexes filters, as in every Keras kernel.
"""

from keras import ops

from keras_convx.ops import core

ORDERS = ("auto", "basis_first", "kernel_first")


def kernel_rows(kernel):
    """A kernel of any rank as the (filters, fan_in) matrix of its filters (last axis)."""
    filters = kernel.shape[-1]
    return ops.transpose(ops.reshape(kernel, (-1, filters)))


def check_kernel_rank(weight, who):
    """ValueError unless `weight` has rank >= 2 (filters on the last axis, fan-in before it):
    orthonormality of a bias or a scalar means nothing."""
    shape = tuple(weight.shape)
    if len(shape) < 2:
        raise ValueError(
            f"{who} applies to kernels of rank >= 2 (filters on the last axis). Received a "
            f"weight of shape {shape}: use it as kernel_regularizer/kernel_constraint, not on "
            "a bias.")


def orthonormality_residual(kernel):
    """‖M Mᵀ − I‖_F² for M = `kernel_rows(kernel)` (diagonal included: unit norm AND
    orthogonality), a scalar tensor."""
    m = kernel_rows(kernel)
    gram = ops.matmul(m, ops.transpose(m))
    eye = ops.eye(gram.shape[0], dtype=gram.dtype)
    return ops.sum(ops.square(gram - eye))


def orthonormal_projection(kernel):
    """The nearest kernel (Frobenius norm) whose filters are orthonormal rows: the polar factor
    U Vᵀ of M = U S Vᵀ. Needs filters <= fan_in (checked by the callers).

    A kernel with a NaN or ±inf entry is returned unchanged, on every backend (their SVDs
    otherwise disagree: some raise, some return NaN, some return finite garbage), so a diverged
    step shows up as the non-finite weight it made."""
    shape = kernel.shape
    finite = ops.all(ops.isfinite(kernel))
    m = kernel_rows(ops.where(finite, kernel, ops.zeros_like(kernel)))
    u, _, vh = ops.svd(m, full_matrices=False)
    projected = ops.reshape(ops.transpose(ops.matmul(u, vh)), shape)
    return ops.where(finite, projected, kernel)


def synthesize_kernel(basis, coefficients, scale=None):
    """The k×k kernel of the basis-then-1×1 composition: B · diag(scale) · A.

    Args:
        basis: (kh, kw, c_in, r) kernel of the r basis filters.
        coefficients: (r, c_out) 1×1 mixing matrix.
        scale: optional (r,) per-basis-channel scale (the folded basis batch norm).
    """
    if scale is not None:
        coefficients = coefficients * ops.expand_dims(scale, -1)
    return ops.einsum("hwcr,ro->hwco", basis, coefficients)


def _affine(y, scale, shift, data_format):
    shape = (1, -1, 1, 1) if data_format == "channels_first" else (1, 1, 1, -1)
    if scale is not None:
        y = y * ops.reshape(scale, shape)
    if shift is not None:
        y = y + ops.reshape(shift, shape)
    return y


def mix_channels(y, coefficients, data_format):
    """The 1×1 convolution y @ A over the channel axis."""
    kernel = ops.reshape(coefficients, (1, 1, *coefficients.shape))
    return core.conv2d(y, kernel, 1, "valid", data_format)


def basis_first(x, basis, coefficients, strides, padding, data_format, scale=None, shift=None):
    """conv(x, B) → affine(scale, shift) → 1×1 mix with A."""
    y = core.conv2d(x, basis, strides, padding, data_format)
    return mix_channels(_affine(y, scale, shift, data_format), coefficients, data_format)


def kernel_first(x, basis, coefficients, strides, padding, data_format, scale=None, shift=None):
    """One convolution with the synthesised kernel B·diag(scale)·A, plus shift @ A."""
    y = core.conv2d(x, synthesize_kernel(basis, coefficients, scale), strides, padding, data_format)
    if shift is None:
        return y
    return _affine(y, None, ops.matmul(ops.expand_dims(shift, 0), coefficients)[0], data_format)


def order_costs(kernel_size, in_channels, rank, filters):
    """Multiply-adds per output pixel of the two orders (the synthesis is per step, not per
    pixel, and is left out): basis-first k²·c_in·r + r·c_out, kernel-first k²·c_in·c_out."""
    k2 = kernel_size[0] * kernel_size[1]
    return {
        "basis_first": k2 * in_channels * rank + rank * filters,
        "kernel_first": k2 * in_channels * filters,
    }


def choose_order(kernel_size, in_channels, rank, filters):
    """The cheaper exact order by `order_costs` (ties go to kernel_first: one conv call)."""
    costs = order_costs(kernel_size, in_channels, rank, filters)
    return "basis_first" if costs["basis_first"] < costs["kernel_first"] else "kernel_first"

