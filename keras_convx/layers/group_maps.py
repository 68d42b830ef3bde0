"""Layers on group feature maps (p4, p4m, cN, dN): `GroupBatchNormalization` (one statistic and affine
per field) and `GroupPooling` (group map → ordinary features).

The layout is `keras_convx.layers.group_conv`'s: channels_last `(B, H, W, fields·|G|)`,
channel `field·|G| + g`.
"""

import keras

from keras_convx import arguments
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.ops import core as ops_core
from keras_convx.ops import group as gops


_BN_OBJECTS = (
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)


@register
class GroupBatchNormalization(keras.layers.Layer):
    """Batch normalization of a group feature map, one statistic and affine per field.

    Mean and variance of field f are taken over the batch, the spatial axes AND the field's
    |G| orientation channels, and its |G| channels share one `gamma` and one `beta`, so the
    layer commutes with the group action (per-channel `BatchNormalization` would not).
    Moving statistics follow `keras.layers.BatchNormalization`:
    `moving = moving·momentum + batch·(1 − momentum)`. It folds exactly into a
    `BatchNormalization` whose per-channel values repeat each field's |G| times
    (`keras_convx.export.fold`).

    Args:
        group: `"p4"` (4 rotations, default), `"p4m"` (4 rotations × mirror, |G| = 8),
            `"cN"` (N rotations, |G| = N) or `"dN"` (N rotations × mirror, |G| = 2N), N ≥ 1;
            `"c4"` and `"d4"` give p4's and p4m's results.
        momentum: float in [0, 1), momentum of the moving statistics.
        epsilon: float > 0 added to the variance.
        center: bool, learn `beta`.
        scale: bool, learn `gamma`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        synchronized: bool. In data-parallel training, compute the batch statistics over
            all replicas' batches (one all-reduce per step) instead of each replica's own:
            under `tf.distribute` (TensorFlow, as `keras.layers.BatchNormalization(
            synchronized=True)`) and under `torch.distributed` (PyTorch with
            `DistributedDataParallel`, see `keras_convx.multi_process`). JAX's
            `keras.distribution.DataParallel` always uses the global batch; elsewhere no
            effect.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer, beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as in `keras.layers.BatchNormalization`.
        **kwargs: base layer arguments.

    Input/output shape:
        a group feature map, `(batch, rows, cols, fields·|G|)` (channels_last); unchanged.

    Weights:
        `gamma`, `beta`, `moving_mean`, `moving_variance`, each `(fields,)`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 3 * 8).astype("float32")
    >>> GroupBatchNormalization("p4m")(x, training=True).shape
    (2, 8, 8, 24)
    """

    # Public marker: the layer takes a group feature map (read by analysis.equivariance_error).
    group_input = True

    def __init__(
        self,
        group="p4",
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        data_format=None,
        synchronized=False,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        self.momentum = _common.number("momentum", momentum, 0, 1, exclusive_maximum=True)
        self.epsilon = _common.number("epsilon", epsilon, 0, exclusive_minimum=True)
        self.center = _common.boolean("center", center)
        self.scale = _common.boolean("scale", scale)
        self.data_format = _common.data_format(data_format)
        self.synchronized = _common.boolean("synchronized", synchronized)
        _common.set_objects(
            self,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.supports_masking = True


    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None or channels % self.order:
            raise ValueError(
                f"GroupBatchNormalization with group={self.group!r} expects a known channel count "
                f"that is a multiple of |G| = {self.order}. Received: input_shape={input_shape}"
            )
        fields = channels // self.order
        self.gamma = self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=(fields,),
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=(fields,),
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(fields,),
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=(fields,),
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        _common.lock_channels(self, channels, self.data_format)

    def _broadcast(self, v):
        # per-field vector → shape broadcasting against split_fields' 5-D layout
        if self.data_format == "channels_last":
            return keras.ops.reshape(v, (1, 1, 1, -1, 1))
        return keras.ops.reshape(v, (1, -1, 1, 1, 1))

    def equivalent_batch_norm(self):
        """The equivalent per-channel `keras.layers.BatchNormalization` weights at inference:
        `[gamma, beta, moving_mean, moving_variance]` (gamma/beta only where `scale`/`center`),
        each field's value repeated over its |G| channels (what `keras_convx.export.fold`
        puts in a `BatchNormalization`; training that one would normalise per channel)."""
        values = [v for v in (self.gamma, self.beta) if v is not None]
        return [keras.ops.repeat(v, self.order) for v in (*values, self.moving_mean, self.moving_variance)]

    def call(self, inputs, training=None, mask=None):
        # statistics in float32, or in float64 for a float64 layer (its variables' dtype)
        stats = "float64" if self.variable_dtype == "float64" else "float32"
        fields = gops.split_fields(keras.ops.cast(inputs, stats), self.order, self.data_format)
        axes = (0, 1, 2, 4) if self.data_format == "channels_last" else (0, 2, 3, 4)
        if training and self.trainable:
            # all-reduced under tf.distribute / torch.distributed; JAX's DataParallel
            # computes global statistics anyway
            mean, variance = ops_core.moments(fields, axes, synchronized=self.synchronized)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        inv = keras.ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self.gamma
        offset = -mean * inv
        if self.beta is not None:
            offset = offset + self.beta
        y = fields * self._broadcast(inv) + self._broadcast(offset)
        return keras.ops.cast(gops.merge_fields(y, self.data_format), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "group": self.group,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "data_format": self.data_format,
                "synchronized": self.synchronized,
            }
        )
        config.update(_common.serialize_objects(self, *_BN_OBJECTS))
        return config


@register
class GroupPooling(keras.layers.Layer):
    """Pools a group feature map over its |G| orientation channels.

    `y[f] = max_g x[f·|G| + g]` (or the mean): the result is an ordinary feature map that
    is equivariant to rotating (and mirroring) the input in the plain spatial sense, and
    becomes invariant after a global spatial pool.

    Args:
        group: `"p4"` (4 rotations, default), `"p4m"` (4 rotations × mirror, |G| = 8),
            `"cN"` (N rotations, |G| = N) or `"dN"` (N rotations × mirror, |G| = 2N), N ≥ 1;
            `"c4"` and `"d4"` give p4's and p4m's results.
        pooling: `"max"` (default) or `"mean"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments.

    Input shape:
        `(batch, rows, cols, fields·|G|)` (channels_last).

    Output shape:
        `(batch, rows, cols, fields)` (channels_last).

    Example:

    >>> x = np.random.rand(2, 8, 8, 5 * 4).astype("float32")
    >>> GroupPooling("p4")(x).shape
    (2, 8, 8, 5)
    """

    # Public marker: the layer takes a group feature map (read by analysis.equivariance_error).
    group_input = True

    def __init__(self, group="p4", pooling="max", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        self.pooling = _common.choice("pooling", pooling, ("max", "mean"))
        self.data_format = _common.data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        axis = 3 if self.data_format == "channels_last" else 1
        channels = input_shape[axis]
        if channels is None or channels % self.order:
            raise ValueError(
                f"GroupPooling with group={self.group!r} expects a known channel count that is a "
                f"multiple of |G| = {self.order}. Received: input_shape={input_shape}"
            )
        _common.lock_channels(self, channels, self.data_format)

    def call(self, inputs):
        fields = gops.split_fields(inputs, self.order, self.data_format)
        axis = 4 if self.data_format == "channels_last" else 2
        if self.pooling == "max":  # (any batch size: Keras' max refuses an empty one)
            return ops_core.reduce_max(fields, axis=axis)
        return keras.ops.mean(fields, axis=axis)

    def compute_output_shape(self, input_shape):
        input_shape = list(input_shape)
        axis = 3 if self.data_format == "channels_last" else 1
        if input_shape[axis] is not None:
            input_shape[axis] //= self.order
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"group": self.group, "pooling": self.pooling, "data_format": self.data_format})
        return config


def batch_norm_from_official(weight, bias, running_mean, running_var):
    """Convert the official E4-Net `C_4_BN` / `D_4_BN` (an `nn.BatchNorm3d` over the
    `(B, fields, |G|, H, W)` view: keys `<name>.bn.weight`, `.bn.bias`, `.bn.running_mean`,
    `.bn.running_var`, each `(fields,)`) to `GroupBatchNormalization.set_weights`.

    The converted layer gives the official module's inference output. Training then goes on
    with Keras' conventions, not PyTorch's: the moving variance is updated with the BIASED
    batch variance (PyTorch uses the unbiased one) and the official momentum 0.1 is Keras'
    `momentum=0.9` (`applications.e4net_mnist_rot`/`e4_resnet18` use 0.9 and epsilon 1e-5,
    the official values). `num_batches_tracked` has no counterpart and is not needed.

    Every value may be an array, a backend tensor or a `torch.nn.Parameter`.

    Returns:
        `[gamma, beta, moving_mean, moving_variance]`.

    Example:

    ```python
    bn = GroupBatchNormalization("p4", momentum=0.9, epsilon=1e-5)
    bn.build((None, 28, 28, 16 * 4))
    bn.set_weights(batch_norm_from_official(*(sd[f"bn1.bn.{k}"] for k in
                                              ("weight", "bias", "running_mean", "running_var"))))
    ```
    """
    names = ("weight", "bias", "running_mean", "running_var")
    values = [arguments.array(n, v, ndim=1) for n, v in zip(names, (weight, bias, running_mean, running_var))]
    if len({v.shape for v in values}) != 1:
        raise ValueError("Expected weight, bias, running_mean and running_var of one shape "
                         f"(fields,). Received shapes: {[v.shape for v in values]}")
    return values
