"""Deeply shared filter bases (Kang & Kim, NeurIPS 2021): `SharedBasisConv2D`.

The basis it combines, `FilterBasis`, and `apply_global_orthonormal` are in
`keras_convx.layers.filter_basis` (importable from here too).
"""

import functools

import keras
from keras import ops

from keras_convx import keras_compat
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._conv_base import BaseConv2D
from keras_convx.layers.filter_basis import FilterBasis
from keras_convx.layers.filter_basis import apply_global_orthonormal  # noqa: F401
from keras_convx.layers.filter_basis import deserialize_basis
from keras_convx.ops import core as ops_core
from keras_convx.ops import shared_basis as sb
from keras_convx.ops.core import conv2d


@register
class SharedBasisConv2D(BaseConv2D):
    """2D convolution through a shared filter basis (Kang & Kim, NeurIPS 2021).

    The layer's k×k filters are combinations of a basis: `unique_bases` filters of its own
    followed by the `size` filters of a `FilterBasis` shared with other layers, in that order
    ([unique u; shared s]). The basis responses go through an (unshared) batch norm, then a
    1×1 convolution with the layer's coefficients gives the `filters` outputs:

    `y = BN(conv(x, [U; B])) @ A`   — equivalently one conv with `[U; B]·diag(γ/σ)·A`.

    Two exact execution orders: `"basis_first"` (basis conv, batch norm, 1×1 mix; cheaper when
    u + s < filters) and `"kernel_first"` (synthesise the k×k kernel, one conv).
    `implementation="auto"` picks the cheaper by multiply-adds per pixel
    (`keras_convx.ops.shared_basis.choose_order`). A basis batch norm in training mode needs
    the basis responses' batch statistics, so training with `basis_batch_norm=True` always runs
    basis-first; in inference the batch norm is an affine map folded into the kernel.

    Args:
        filters: int, the number of output channels.
        basis: the shared `FilterBasis` (its `kernel_size` is this layer's kernel size).
        unique_bases: int ≥ 0, the layer's own basis filters (`u`, default 0).
        basis_part: which part of a multi-part basis to use (default 0).
        basis_batch_norm: bool, batch norm over the u + s basis responses (default True, as
            the paper; its statistics and affine are per layer).
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        activation: activation of the output, or None.
        use_bias: bool (default False: the paper follows the conv with a batch norm).
        implementation: `"auto"`, `"basis_first"` or `"kernel_first"`.
        basis_bn_momentum, basis_bn_epsilon: of the basis batch norm (defaults 0.9 and 1e-5,
            PyTorch's 0.1 / 1e-5 as in the official code).
        basis_bn_synchronized: bool (default False). In data-parallel training, the basis
            batch norm's statistics come from all replicas' batches (one all-reduce per
            step): under `tf.distribute` (TensorFlow, as `keras.layers.BatchNormalization(
            synchronized=True)`) and under `torch.distributed` (PyTorch with
            `DistributedDataParallel`); JAX's `keras.distribution.DataParallel` always uses
            the global batch; elsewhere no effect, so a config saved with it loads on every
            backend.
        kernel_initializer: for the unique basis and the coefficients (default He normal
            with fan_out, as the official code).
        bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`; the kernel ones apply
            to the unique basis and the coefficients (the shared basis has its own).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4-D tensor `(B, H, W, c_in)` or `(B, c_in, H, W)`, c_in matching the basis.

    Output shape: `(B, H', W', filters)` or `(B, filters, H', W')`.

    Example:

    >>> basis = keras_convx.layers.FilterBasis(size=16, kernel_size=3)
    >>> convs = [keras_convx.layers.SharedBasisConv2D(32, basis, unique_bases=1)
    ...          for _ in range(8)]          # 8 layers, one 3×3×32×16 basis
    >>> x = keras.random.normal((2, 16, 16, 32))
    >>> for conv in convs:
    ...     x = conv(x)

    Reference: W. Kang, D. Kim, "Deeply Shared Filter Bases for Parameter-Efficient
    Convolutional Neural Networks", NeurIPS 2021.
    """

    # For keras_convx.pruning.make_prunable: the (u + s, filters) mixing coefficients.
    PRUNABLE_WEIGHTS = {"coefficients": ((-1,), (0,), "coefficients")}

    def __init__(
        self,
        filters,
        basis,
        unique_bases=0,
        basis_part=0,
        basis_batch_norm=True,
        strides=1,
        padding="same",
        data_format=None,
        activation=None,
        use_bias=False,
        implementation="auto",
        basis_bn_momentum=0.9,
        basis_bn_epsilon=1e-5,
        basis_bn_synchronized=False,
        **kwargs,
    ):
        if not isinstance(basis, FilterBasis):
            raise TypeError(
                "Expected basis to be a keras_convx.layers.FilterBasis. "
                f"Received: basis={basis!r}"
            )
        if kwargs.get("kernel_initializer") is None:  # He normal with fan_out (official code)
            kwargs["kernel_initializer"] = keras.initializers.VarianceScaling(
                2.0, "fan_out", "untruncated_normal")
        super().__init__(filters, strides=strides, padding=padding, data_format=data_format,
                         activation=activation, use_bias=use_bias, **kwargs)
        self.basis = basis
        self.unique_bases = _common.integer("unique_bases", unique_bases, minimum=0)
        self.basis_part = _common.integer("basis_part", basis_part, minimum=0)
        if self.basis_part >= basis.parts:
            raise ValueError(
                f"Expected basis_part < basis.parts ({basis.parts}). "
                f"Received: basis_part={basis_part}"
            )
        self.basis_batch_norm = _common.boolean("basis_batch_norm", basis_batch_norm)
        self.kernel_size = basis.kernel_size
        self.implementation = _common.choice("implementation", implementation, sb.ORDERS)
        self.basis_bn_momentum = _common.number("basis_bn_momentum", basis_bn_momentum, 0, 1,
                                                exclusive_maximum=True)
        self.basis_bn_epsilon = _common.number("basis_bn_epsilon", basis_bn_epsilon, 0,
                                               exclusive_minimum=True)
        self.basis_bn_synchronized = _common.boolean("basis_bn_synchronized",
                                                     basis_bn_synchronized)
        self.basis_bn = None
        if self.basis_batch_norm:
            options = dict(axis=_common.channel_axis(self.data_format),
                           momentum=self.basis_bn_momentum, epsilon=self.basis_bn_epsilon,
                           dtype=self.dtype_policy, name="basis_bn")
            if self.basis_bn_synchronized and keras.backend.backend() == "tensorflow":
                self.basis_bn = keras.layers.BatchNormalization(synchronized=True, **options)
            elif keras.backend.backend() == "torch":
                # Keras refuses synchronized=True off TensorFlow: the same batch norm with
                # its moments summed over the torch.distributed processes. Unsynchronized
                # too, Keras' own moments read its axes from a tracked list, which
                # torch.compile cannot trace (a graph break in every training step).
                self.basis_bn = keras_compat.batch_normalization_with_moments(
                    functools.partial(ops_core.moments, synchronized=self.basis_bn_synchronized),
                    **options)
            else:
                self.basis_bn = keras.layers.BatchNormalization(**options)

    @property
    def rank(self):
        """u + s, the number of basis filters this layer combines."""
        return self.unique_bases + self.basis.size

    def build(self, input_shape):
        channels = self.input_channels(input_shape)
        self.basis.build_for_channels(channels, user=f"{self.name!r} (input_shape="
                                      f"{tuple(input_shape)})")
        self.lock_channels(channels)
        self.unique_kernel = None
        if self.unique_bases:
            self.unique_kernel = self.add_kernel(
                "unique_kernel", (*self.kernel_size, channels, self.unique_bases))
        self.coefficients = self.add_kernel("coefficients", (self.rank, self.filters))
        self.add_bias()
        if self.basis_bn is not None:
            bn_shape = [None] * 4
            bn_shape[_common.channel_axis(self.data_format)] = self.rank
            self.basis_bn.build(tuple(bn_shape))

    def basis_kernel(self):
        """The (k_h, k_w, c_in, u + s) kernel [unique; shared part], float32."""
        shared = self.basis.part(self.basis_part)
        if self.unique_kernel is None:
            return shared
        return ops.concatenate([self.unique_kernel, shared], axis=-1)

    def resolved_implementation(self, training=False):
        """The order `call` runs for `training`."""
        if self.basis_bn is not None and training:
            return "basis_first"
        if self.implementation != "auto":
            return self.implementation
        channels = self.basis.input_channels
        return sb.choose_order(self.kernel_size, channels, self.rank, self.filters)

    def _folded_bn(self):
        """(scale, shift) of the basis batch norm in inference mode."""
        bn = self.basis_bn
        scale = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
        scale = scale * ops.cast(bn.gamma, "float32")
        shift = ops.cast(bn.beta, "float32") - ops.cast(bn.moving_mean, "float32") * scale
        return scale, shift

    def equivalent_conv(self):
        """The equivalent inference-mode Conv2D (kernel, bias), the basis batch norm folded in."""
        scale, shift = self._folded_bn() if self.basis_bn is not None else (None, None)
        kernel = sb.synthesize_kernel(self.basis_kernel(), self.coefficients, scale)
        bias = ops.zeros((self.filters,), "float32")
        if shift is not None:
            bias = ops.matmul(ops.expand_dims(shift, 0), self.coefficients)[0]
        if self.bias is not None:
            bias = bias + self.bias
        return kernel, bias

    def synthesized_kernel(self):  # deprecated name of equivalent_conv()
        return self.equivalent_conv()

    def convolution_op(self, inputs, training=None):
        dtype = self.compute_dtype
        order = self.resolved_implementation(bool(training))
        basis = ops.cast(self.basis_kernel(), dtype)
        coefficients = ops.cast(self.coefficients, dtype)
        args = (self.strides, self.padding, self.data_format)
        if order == "basis_first":
            y = conv2d(inputs, basis, *args)
            if self.basis_bn is not None:
                y = self.basis_bn(y, training=training)
            return sb.mix_channels(y, coefficients, self.data_format)
        scale = shift = None
        if self.basis_bn is not None:
            scale, shift = (ops.cast(t, dtype) for t in self._folded_bn())
        return sb.kernel_first(inputs, basis, coefficients, *args, scale=scale, shift=shift)

    def call(self, inputs, training=None):
        return self.bias_and_activation(self.convolution_op(inputs, training))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "basis": keras.saving.serialize_keras_object(self.basis),
                "unique_bases": self.unique_bases,
                "basis_part": self.basis_part,
                "basis_batch_norm": self.basis_batch_norm,
                "implementation": self.implementation,
                "basis_bn_momentum": self.basis_bn_momentum,
                "basis_bn_epsilon": self.basis_bn_epsilon,
                "basis_bn_synchronized": self.basis_bn_synchronized,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        basis = config.pop("basis")
        if isinstance(basis, dict):
            basis = deserialize_basis(basis, config.get("name"))
        return cls(basis=basis, **config)
