"""Group-equivariant convolutions for p4, p4m and the groups cN, dN of any order.

`GroupLiftConv2D` (image → group feature map) and `GroupConv2D` (group → group, any odd
kernel size; `kernel_size=1` is the 1×1 group convolution); `GroupBatchNormalization` and
`GroupPooling` are in `keras_convx.layers.group_maps`.

A group feature map is an ordinary 4-D tensor: channels_last `(B, H, W, fields·|G|)` with
channel index `field·|G| + g` (channels_first `(B, fields·|G|, H, W)`), so ReLU, Dropout,
Add, MaxPooling2D and friends compose with these layers unchanged. `filters` counts fields.
The group elements are `rot90^g` (g = 0..3, NumPy's counter-clockwise `rot90`) and, for p4m,
their mirrored versions g = 4..7; cN has the N rotations by 360°/N and dN adds their
mirrored versions (see `keras_convx.ops.group_tables`). Rotations by multiples of 90° and
the mirrors move a kernel exactly; other angles rotate it through a steerable basis
(circular harmonics × Gaussian rings with the band limit of escnn's `_manual_fco2`,
Weiler & Cesa 2019; see
`keras_convx.ops.group_tables`) onto which every element's kernel is projected, so the 90° subgroup stays exact.
"""

import warnings

import keras
import numpy as np

from keras_convx import arguments
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._conv_base import BaseConv2D
from keras_convx.ops import group as gops
from keras_convx.ops.core import conv2d


class _GroupConvBase(BaseConv2D):
    """Shared arguments, weights and forward pass of the lifting and group convolutions."""

    # Public marker: the layer takes a group feature map (read by analysis.equivariance_error).
    group_input = True
    # For keras_convx.pruning.make_prunable: a channel is a field (its |G| copies go together).
    PRUNABLE_WEIGHTS = {"kernel": ((-1,), (-2,), "kernel")}
    # He-normal kernels: the official code's scale.
    conv_objects = dict(BaseConv2D.conv_objects, kernel_initializer="he_normal")

    def __init__(self, filters, kernel_size, group="p4", strides=1, padding="same",
                 data_format=None, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, strides=strides, padding=padding, data_format=data_format,
                         activation=activation, use_bias=use_bias, **kwargs)
        self.kernel_size = _common.odd_kernel_size(kernel_size)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        # Static NumPy gather table and kernel maps, built here (eagerly) and read as
        # constants by `call`.
        self._table = self._gather_table()

    @property
    def bias_repeats(self):
        """|G|: each field's bias is shared by its |G| channels."""
        return self.order

    def _kernel_in_channels(self, channels):
        """Input channels of the stored kernel; group inputs override it to validate |G|."""
        return channels

    def build(self, input_shape):
        channels = self.input_channels(input_shape)
        k = self.kernel_size
        self.kernel = self.add_kernel("kernel", (k, k, self._kernel_in_channels(channels), self.filters))
        self.add_bias()
        self.lock_channels(channels)

    def equivalent_conv(self):
        """The equivalent ordinary convolution: `(kernel, bias)`, the `(k, k, C_in,
        filters·|G|)` Conv2D kernel and the `(filters·|G|,)` bias (each field's bias repeated
        |G| times) or None (what `keras_convx.export.fold` puts in a `Conv2D`)."""
        bias = None if self.bias is None else keras.ops.repeat(self.bias, self.order)
        return self._expand(self.kernel), bias

    def dense_kernel(self):
        """Deprecated: `equivalent_conv()[0]`."""
        warnings.warn("dense_kernel() is deprecated: use equivalent_conv()[0].", DeprecationWarning, 2)
        return self.equivalent_conv()[0]

    def dense_bias(self):
        """Deprecated: `equivalent_conv()[1]`."""
        warnings.warn("dense_bias() is deprecated: use equivalent_conv()[1].", DeprecationWarning, 2)
        return self.equivalent_conv()[1]

    def convolution_op(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        kernel = self._expand(keras.ops.cast(self.kernel, self.compute_dtype))
        return conv2d(x, kernel, self.strides, self.padding, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "group": self.group})
        return config


_CONV_ARGS_DOC = """
    Args:
        filters: int, the number of output fields (the output has `filters·|G|` channels).
        kernel_size: odd int (or a pair of equal odd ints).
        group: `"p4"` (4 rotations, default), `"p4m"` (4 rotations × mirror, |G| = 8),
            `"cN"` (N rotations, |G| = N) or `"dN"` (N rotations × mirror, |G| = 2N), N ≥ 1;
            `"c4"` and `"d4"` give p4's and p4m's results. Kernel sizes above 1 in a group with
            angles off the 90° grid (N not dividing 4) use the steerable basis: a k×k
            kernel keeps 4 (k = 3), 9 (k = 5) or 16 (k = 7) degrees of freedom.
        strides: int or tuple of 2 ints. Stride 1 with `"same"` padding is exactly
            equivariant; larger strides are only equivariant on inputs whose size makes the
            sampling grid symmetric.
        padding: `"same"` (default) or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        activation: activation applied to the output, or None.
        use_bias: bool; one bias per output field, shared by its |G| channels.
        kernel_initializer: initializer of the stored kernel (default `"he_normal"`, the
            official code's scale).
        bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`, on the stored
            (unexpanded) weights.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).
"""


@register
class GroupLiftConv2D(_GroupConvBase):
    __doc__ = (
        """Lifting convolution: an ordinary image → a group feature map (p4, p4m, cN, dN).

    `y[f·|G| + g] = x ⋆ T_g(w[f])` (cross-correlation), where `T_g` is the spatial transform
    of group element g (`rot90^g`; for p4m the mirrored elements `rot90^(7-g)(wᵀ)` for g ≥ 4;
    for cN/dN the rotation by 360°·g/N, through the steerable basis off the 90° grid).
    Rotating (or, for p4m, mirroring) the input rotates the output spatially and permutes
    its group axis (`keras_convx.analysis.equivariance_error` measures it).
"""
        + _CONV_ARGS_DOC
        + """
    Input shape:
        `(batch, rows, cols, channels)` (channels_last) or `(batch, channels, rows, cols)`.

    Output shape:
        `(batch, new_rows, new_cols, filters·|G|)` (channels_last), channel `f·|G| + g`.

    Weights:
        `kernel` `(k, k, channels, filters)`; `bias` `(filters,)` if `use_bias`.

    Example:

    >>> x = np.random.rand(2, 28, 28, 1).astype("float32")
    >>> GroupLiftConv2D(8, 3, group="p4")(x).shape
    (2, 28, 28, 32)
    """
    )

    group_input = False  # an image in, a group feature map out

    def _gather_table(self):
        return gops.kernel_tables("lift", self.group, self.kernel_size)

    def _expand(self, kernel):
        return gops.lift_kernel(kernel, self.group, self._table)


@register
class GroupConv2D(_GroupConvBase):
    __doc__ = (
        """Group convolution on group feature maps (group → group; p4, p4m, cN, dN).

    For output element g the filter applied to input element h is
    `T_g(w[:, :, P[g, h]])`, with `P` the group's permutation table (`P[g, h] = g⁻¹h`;
    p4: `(h − g) mod 4`).
    `kernel_size=1` gives the 1×1 group convolution `W[f, g, c, h] = w[f, c, P[g, h]]`.
    The kernel expansion is one static gather from NumPy tables built once per config
    (`keras_convx.ops.group.group_kernel`; off the 90° grid, after one small matrix product
    with the representative rotations), followed by one ordinary convolution.
"""
        + _CONV_ARGS_DOC
        + """
    Input shape:
        a group feature map, `(batch, rows, cols, fields·|G|)` (channels_last). The tensor
        does not carry its group: a p4 map (4 channels per field) fed to a p4m layer is
        accepted whenever its channel count is a multiple of 8, and silently read as half as
        many p4m fields. Keep one `group` per network (only the channel count is checked).

    Output shape:
        `(batch, new_rows, new_cols, filters·|G|)` (channels_last).

    Weights:
        `kernel` `(k, k, fields·|G|, filters)` (input channel `c·|G| + h`, the layout of the
        official code's `(filters, fields, |G|, k, k)` weight); `bias` `(filters,)`.

    Example:

    >>> x = np.random.rand(2, 16, 16, 8 * 4).astype("float32")
    >>> GroupConv2D(16, 3, group="p4")(x).shape
    (2, 16, 16, 64)
    """
    )

    def _kernel_in_channels(self, channels):
        if channels % self.order:
            raise ValueError(
                f"GroupConv2D with group={self.group!r} expects a group feature map whose channels "
                f"are a multiple of |G| = {self.order}. Received: {channels} channels"
            )
        return channels

    def _gather_table(self):
        return gops.kernel_tables("group", self.group, self.kernel_size)

    def _expand(self, kernel):
        return gops.group_kernel(kernel, self.group, self._table)


def from_official_weights(weight, bias=None):
    """Convert a group convolution of the official E4-Net PyTorch code to this layout.

    The official modules (He et al., github.com/LingshenHe/Efficient-Equivariant-Network,
    `model/group_op.py`) store:

    - `C_4_Conv` / `D_4_Conv` (lifting, 3×3): `weight` `(F, C_in, k, k)` → a
      `GroupLiftConv2D` kernel `(k, k, C_in, F)`;
    - `C_4_3x3` / `D_4_3x3`: `weight` `(F, C, |G|, k, k)` → a `GroupConv2D` kernel
      `(k, k, C·|G|, F)`, plus `bias` `(F,)` when built with `bias=True`;
    - `C_4_1x1` / `D_4_1x1` (the ResNet shortcuts): `weight` `(F, C, |G|)` → the kernel of a
      `GroupConv2D(kernel_size=1)`, `(1, 1, C·|G|, F)`.

    Their element order, rotation direction, input-slot tables and channel layout
    (`field·|G| + g`) are the ones used here, so no permutation is needed beyond the axes.
    An official module with `stride=2` is a stride-1 convolution FOLLOWED by 2×2 max pooling
    (`nn.MaxPool2d(2, 2)`), not a strided convolution: port it to
    `GroupConv2D(..., strides=1)` followed by `keras.layers.MaxPooling2D(2)` (the
    `applications.e4_resnet18` blocks are built that way), with the bias added after the
    pooling (the same thing, the bias being constant over each field's window). The official
    convolutions pad by (k − 1)/2 on each side: `padding="same"` for odd k at stride 1.

    Args:
        weight: array, tensor or `torch.nn.Parameter` of rank 4 (lifting), 5 (group) or 3
            (1×1 group conv).
        bias: optional `(F,)` bias (official `C_4_3x3(bias=True)`).

    Returns:
        The list for `layer.set_weights` of the matching layer (`use_bias` = bias given).

    Example:

    ```python
    layer = GroupConv2D(32, 3, group="p4", use_bias=False)
    layer.build((None, 16, 16, 16 * 4))
    layer.set_weights(from_official_weights(state_dict["conv2_x.0.residual_function.0.weight"]))
    ```
    """
    weight = arguments.array("weight", weight, ndim=(3, 4, 5))
    fields = weight.shape[0]
    if weight.ndim == 4:  # lifting (F, C_in, k, k)
        if weight.shape[2] != weight.shape[3]:
            raise ValueError(f"Expected a square lifting kernel (F, C_in, k, k). "
                             f"Received: weight.shape={weight.shape}")
        kernel = np.transpose(weight, (2, 3, 1, 0))
    else:
        if weight.ndim == 3:
            weight = weight[..., None, None]
        _, cin, order, k, k2 = weight.shape
        if order not in (4, 8) or k != k2:
            raise ValueError(
                "Expected a group kernel (F, C, |G|, k, k) or (F, C, |G|) with |G| = 4 (p4) or 8 "
                f"(p4m). Received: weight.shape={weight.shape}"
            )
        kernel = np.transpose(weight, (3, 4, 1, 2, 0)).reshape(k, k, cin * order, fields)
    weights = [np.ascontiguousarray(kernel)]
    if bias is not None:
        bias = arguments.array("bias", bias, ndim=1)
        if bias.shape != (fields,):
            raise ValueError(f"Expected bias of shape ({fields},). Received: bias.shape={bias.shape}")
        weights.append(bias)
    return weights


# Moved to `layers.group_maps` (kept importable from here).
from keras_convx.layers.group_maps import GroupBatchNormalization  # noqa: E402,F401
from keras_convx.layers.group_maps import GroupPooling  # noqa: E402,F401
