"""Synaptic strength (Lin et al., NeurIPS 2018): `SynapticConv2D`."""

import keras
import numpy as np
from keras import ops

from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._conv_base import BaseConv2D
from keras_convx.ops import synaptic as syn
from keras_convx.ops.core import conv2d
from keras_convx.ops.core import normalize_pair


def _default_strength_regularizer():
    return keras.regularizers.L1(1e-4)


class _MaskedPenalty(keras.regularizers.Regularizer):
    """The layer's weight penalties, attached to its `strength` variable.

    `strength_regularizer(m · s)` + `kernel_regularizer(W)`: computed on the MASKED strength
    and the effective kernel, so a pruned connection contributes neither a penalty nor a
    gradient. Reads the variables through `.value` (the stateless-scope value inside a
    compiled train step). Internal: the layer's config holds the user's regularizers.
    """

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, strength):
        layer = self.layer
        mask = ops.cast(layer.mask.value, strength.dtype)
        total = ops.zeros((), strength.dtype)
        if layer.strength_regularizer is not None:
            total = total + layer.strength_regularizer(strength * mask)
        if layer.kernel_regularizer is not None:
            kernel = syn.synaptic_kernel(layer.direction.value, strength, mask, layer.epsilon)
            total = total + layer.kernel_regularizer(kernel)
        return total

    def get_config(self):  # pragma: no cover - never serialised (see the class docstring)
        return {}


@register
class SynapticConv2D(BaseConv2D):
    """2D convolution with synaptic strengths and a connection mask (Lin et al., 2018).

    A connection is one (input channel i → output channel j) pair, i.e. one k×k kernel slice.
    The layer convolves with

        `W[:, :, i, j] = m_ij · s_ij · V[:, :, i, j] / ‖V[:, :, i, j]‖_F`

    with a trainable strength `s` (c_in/groups × filters), a trainable direction `V` (shaped
    like a Conv2D kernel) and a NON-trainable connection mask `m ∈ {0, 1}` applied in the
    graph. At initialisation `s_ij = ‖V_ij‖`, so the layer equals a plain `Conv2D` whose
    kernel was drawn from `kernel_initializer` (`V` is that draw).

    The strength regulariser (L1 with factor 1e-4 by default; any Keras regulariser, or None)
    acts on the masked strength `m · s`, and `kernel_regularizer` on the effective kernel `W`:
    a pruned connection has exactly zero kernel, penalty and gradient, whatever the optimizer.
    (Its stored strength is zeroed when it is pruned; an optimizer with momentum may still move
    the stored number afterwards, but it is multiplied by `m = 0` in the graph, in `kernel` and
    in every export.)

    Pruning: `keras_convx.callbacks.SynapticPruning` (on a schedule) or
    `keras_convx.pruning.prune` (one shot) set the masks from the connection importance —
    `|m·s|`, the paper's synaptic strength (the batch norm producing this layer's input should
    run with `scale=False`, so |s_ij| tracks ‖W_ij‖·‖X_i‖), or the kernel-L1 criterion.
    `keras_convx.pruning.strip` turns the layer into a plain `Conv2D` with identical outputs,
    `keras_convx.pruning.compact` removes dead channels.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints (default 1).
        padding: `"valid"` (default, as Conv2D) or `"same"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        dilation_rate: int or tuple of 2 ints (default 1).
        groups: int ≥ 1 dividing `filters` and the input channels (default 1).
        activation: activation of the output, or None.
        use_bias: bool (default True, as Conv2D).
        kernel_initializer: draws the direction `V` (hence the initial kernel); default
            `"glorot_uniform"` as Conv2D.
        bias_initializer: default `"zeros"`.
        strength_regularizer: on the masked strength; default `keras.regularizers.L1(1e-4)`.
        kernel_regularizer: on the effective kernel `W` (default None).
        bias_regularizer, activity_regularizer, bias_constraint: as in Conv2D.
        strength_constraint: on the stored strength (e.g. `"non_neg"`), default None.
        epsilon: float > 0 inside ‖V‖'s square root (default 1e-12).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4-D `(B, H, W, c_in)` or `(B, c_in, H, W)`.

    Output shape: `(B, H', W', filters)` or `(B, filters, H', W')`.

    Example:

    >>> conv = keras_convx.layers.SynapticConv2D(32, 3, padding="same")
    >>> y = conv(keras.random.normal((2, 16, 16, 8)))
    >>> conv.strength.shape, conv.mask.shape      # one per connection
    ((8, 32), (8, 32))
    >>> conv.connection_sparsity                  # until pruned
    0.0

    Reference: C. Lin, Z. Zhong, W. Wu, J. Yan, "Synaptic Strength For Convolutional Neural
    Network", NeurIPS 2018.
    """

    conv_arguments = ("dilation_rate", "groups")
    # The strength takes the place of the kernel for regularizers and constraints.
    conv_objects = {
        "kernel_initializer": "glorot_uniform",
        "bias_initializer": "zeros",
        "strength_regularizer": "default",
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "strength_constraint": None,
        "bias_constraint": None,
    }

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        groups=1,
        activation=None,
        use_bias=True,
        epsilon=1e-12,
        **kwargs,
    ):
        regularizer = kwargs.get("strength_regularizer", "default")
        if isinstance(regularizer, str) and regularizer == "default":
            kwargs["strength_regularizer"] = _default_strength_regularizer()
        super().__init__(filters, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, groups=groups, activation=activation,
                         use_bias=use_bias, **kwargs)
        self.kernel_size = normalize_pair("kernel_size", kernel_size)
        self.epsilon = _common.number("epsilon", epsilon, 0, exclusive_minimum=True)


    def build(self, input_shape):
        channels = self.input_channels(input_shape)
        shape = (*self.kernel_size, channels // self.groups, self.filters)
        self.direction = self.add_weight(
            name="direction", shape=shape, initializer=self.kernel_initializer
        )
        self.strength = self.add_weight(
            name="strength",
            shape=shape[2:],
            initializer="ones",
            regularizer=_MaskedPenalty(self),
            constraint=self.strength_constraint,
        )
        self.mask = self.add_weight(
            name="mask", shape=shape[2:], initializer="ones", trainable=False, dtype="float32"
        )
        self.add_bias()
        # s_ij = ‖V_ij‖: the layer starts as the plain conv with kernel V.
        self.strength.assign(syn.direction_norm(self.direction, self.epsilon))
        self.lock_channels(channels)

    @property
    def kernel(self):
        """The effective (k_h, k_w, c_in/groups, filters) kernel m·s·V/‖V‖ (float32)."""
        return syn.synaptic_kernel(self.direction, self.strength, self.mask, self.epsilon)

    def equivalent_conv(self):
        """The equivalent ordinary convolution: `(kernel, bias)`, the effective kernel
        m·s·V/‖V‖ (pruned slices exactly zero) and the bias or None (what
        `keras_convx.export.fold` puts in a `Conv2D`)."""
        return self.kernel, self.bias

    def masked_strength(self):
        """m · s, the (c_in/groups, filters) strengths of the live connections."""
        return self.strength * self.mask

    @property
    def connection_sparsity(self):
        """The fraction of connections pruned (mask 0), a Python float."""
        mask = np.asarray(ops.convert_to_numpy(self.mask))
        return float(np.mean(mask == 0))

    def set_mask(self, mask):
        """Sets the connection mask (c_in/groups, filters) of 0/1 values and zeroes the stored
        strength of every pruned connection. Raises ValueError on a wrong shape or values."""
        mask = np.asarray(ops.convert_to_numpy(mask), dtype=np.float32)
        if mask.shape != tuple(self.mask.shape):
            raise ValueError(
                f"Expected a mask of shape {tuple(self.mask.shape)} (c_in/groups, filters) for "
                f"{self.name!r}. Received shape {mask.shape}"
            )
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError(f"Expected a mask of 0/1 values for {self.name!r}.")
        self.mask.assign(mask)
        strength = np.asarray(ops.convert_to_numpy(self.strength))
        self.strength.assign((strength * mask).astype(strength.dtype))

    def convolution_op(self, inputs):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        return conv2d(inputs, kernel, self.strides, self.padding, self.data_format,
                      self.dilation_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "epsilon": self.epsilon})
        return config

    # -- conversion -------------------------------------------------------------------------

    @classmethod
    def from_conv2d(cls, conv, **overrides):
        """A SynapticConv2D with the same config and identical outputs as a built
        `keras.layers.Conv2D` (V = its kernel, s = the slices' norms, all connections live).

        `overrides` replace constructor arguments (e.g. `strength_regularizer=None`). The new
        layer is built with the conv's input channels. Raises TypeError for other layers.
        """
        if type(conv) is not keras.layers.Conv2D:
            raise TypeError(
                f"Expected a keras.layers.Conv2D. Received: {type(conv).__name__} ({conv!r})"
            )
        if not conv.built:
            raise ValueError(f"Expected a built Conv2D; {conv.name!r} is not built.")
        if getattr(conv, "lora_enabled", False) or getattr(conv, "quantization_mode", None):
            raise ValueError(f"{conv.name!r} uses LoRA or quantization; convert a plain Conv2D.")
        c = conv.get_config()
        kwargs = {
            name: c[name]
            for name in (
                "filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                "groups", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                "kernel_regularizer", "bias_regularizer", "activity_regularizer",
                "bias_constraint", "name", "trainable", "dtype",
            )
        }
        if c.get("kernel_constraint") is not None:
            raise ValueError(
                f"{conv.name!r} has a kernel_constraint, which has no SynapticConv2D "
                "counterpart (the kernel is m·s·V/‖V‖); remove it or use strength_constraint."
            )
        kwargs.update(overrides)
        layer = cls(**kwargs)
        kernel = np.asarray(ops.convert_to_numpy(conv.kernel), dtype=np.float32)
        channels = kernel.shape[2] * layer.groups
        shape = [None] * 4
        shape[_common.channel_axis(layer.data_format)] = channels
        layer.build(tuple(shape))
        layer.direction.assign(kernel)
        layer.strength.assign(syn.connection_norms(kernel).astype(np.float32))
        if layer.bias is not None:
            layer.bias.assign(ops.convert_to_numpy(conv.bias))
        return layer
