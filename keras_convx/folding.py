"""Folding: keras_convx layers that are, at inference, a plain convolution or batch norm,
rebuilt as core Keras layers with the same outputs.

The protocol is one method on the layer, not a table of classes: `equivalent_conv()` →
`(kernel, bias)`, `(kernel, bias, pads)` or None; `equivalent_batch_norm()` for a batch norm.
`fold(model)` is the first step of every export route (`keras_convx.export` re-exports it);
`keras_convx.compaction.strip` uses `fold_layer` for the synaptic layers.
"""

import keras

from keras_convx import graph
from keras_convx.ops.core import to_numpy

__all__ = ["fold", "fold_layer", "foldable"]


def _conv(layer, filters, kernel, bias, padding=None, groups=1, name=None):
    """A core Conv2D carrying `kernel` / `bias` with the layer's geometry and activation."""
    conv = keras.layers.Conv2D(**graph.plain_conv_config(
        layer, filters=filters, use_bias=bias is not None, kernel_size=kernel.shape[:2],
        padding=padding, groups=groups, name=name))
    weights = [kernel] + ([bias] if bias is not None else [])
    return conv, lambda new: new.set_weights(weights)


def _fold_conv(layer):
    """A layer with `equivalent_conv()` → one Conv2D, or a ZeroPadding2D + "valid" Conv2D
    block where it gives explicit pads; None where it has no equivalent."""
    equivalent = layer.equivalent_conv()
    if equivalent is None:
        return None
    dtype = keras.backend.standardize_dtype(layer.variable_dtype)  # float64 stays float64
    kernel = to_numpy(equivalent[0], dtype)
    bias = None if equivalent[1] is None else to_numpy(equivalent[1], dtype)
    pads = equivalent[2] if len(equivalent) > 2 else None
    groups = getattr(layer, "groups", 1)
    if pads is None:
        return _conv(layer, kernel.shape[-1], kernel, bias, groups=groups)
    conv, set_conv = _conv(layer, kernel.shape[-1], kernel, bias, padding="valid",
                           groups=groups, name=f"{layer.name}_conv")
    block = keras.Sequential(
        [keras.layers.ZeroPadding2D(pads, data_format=layer.data_format,
                                    name=f"{layer.name}_pad"), conv],
        name=layer.name,
    )
    return block, lambda new: set_conv(new.layers[-1])


def _fold_batch_norm(layer):
    """A layer with `equivalent_batch_norm()` → one per-channel BatchNormalization."""
    bn = keras.layers.BatchNormalization(
        axis=-1 if layer.data_format == "channels_last" else 1,
        momentum=layer.momentum, epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
        dtype=layer.dtype_policy, trainable=layer.trainable, name=layer.name,
    )
    dtype = keras.backend.standardize_dtype(layer.variable_dtype)
    weights = [to_numpy(v, dtype) for v in layer.equivalent_batch_norm()]
    return bn, lambda new: new.set_weights(weights)


def fold_layer(layer):
    """`graph.rewrite`'s replacement of one layer: `(new layer, set its weights)` or None.

    The protocol: a layer that can be an ordinary convolution says so with
    `equivalent_conv()`, a batch norm with `equivalent_batch_norm()` (every keras_convx layer
    that folds has one of them; other layers may too)."""
    if callable(getattr(layer, "equivalent_conv", None)):
        return _fold_conv(layer)
    if callable(getattr(layer, "equivalent_batch_norm", None)):
        return _fold_batch_norm(layer)
    return None


def foldable(layer):
    """Whether `fold` turns the BUILT `layer` into core Keras layers (it has
    `equivalent_conv()` or `equivalent_batch_norm()`, and for a max-pooling `LogPolarConv2D`
    it is None).

    Example:

    >>> conv = keras_convx.layers.GroupConv2D(2, 3, group="p4")
    >>> conv.build((None, 8, 8, 8))
    >>> keras_convx.export.foldable(conv)          # one Conv2D with the expanded kernel
    True
    >>> pooled = keras_convx.layers.LogPolarConv2D(4, 9, rings=2, sectors=6, growth_rate=3.0,
    ...                                            pooling="max")
    >>> pooled.build((None, 16, 16, 2))
    >>> keras_convx.export.foldable(pooled)        # max over each region: no single conv
    False
    """
    if callable(getattr(layer, "equivalent_conv", None)):
        if not layer.built:
            raise ValueError(f"foldable() needs a built layer (its equivalent is computed from "
                             f"its weights). Received the unbuilt {layer.name!r}.")
        return layer.equivalent_conv() is not None
    return callable(getattr(layer, "equivalent_batch_norm", None))


def fold(model):
    """An equivalent inference model in which keras_convx layers become core Keras layers.

    - `LogPolarConv2D` (mean/sum pooling), `GroupLiftConv2D`, `GroupConv2D`,
      `SharedBasisConv2D` (basis batch norm folded in) and `SynapticConv2D` → one
      `keras.layers.Conv2D` with the synthesised dense kernel and bias (a `LogPolarConv2D`
      with "same" padding and stride > 1 becomes a `ZeroPadding2D` + "valid" `Conv2D` block,
      since its padding is anchored at the window centre);
    - `GroupBatchNormalization` → `keras.layers.BatchNormalization` with each field's
      statistics and affine repeated over its |G| channels (identical at inference; training
      the folded model would normalise per channel instead of per field);
    - every other layer (`E4Conv2D`, the PDE layers, `GroupPooling`, max-pooling
      `LogPolarConv2D`, core layers) is copied with its weights.

    The rule is a protocol, not a list of classes: a layer folds when it has
    `equivalent_conv()` (returning `(kernel, bias)` for a Conv2D of its strides, padding,
    dilation, groups and activation — or `(kernel, bias, pads)` with explicit
    `((top, bottom), (left, right))` zero padding before a "valid" one — or None) or
    `equivalent_batch_norm()`; a layer of your own can take part the same way.

    Outputs are identical to the original model's in inference mode (up to float rounding of
    the different summation order). A shared `FilterBasis` becomes independent kernels.

    Args:
        model: a Functional or built Sequential `keras.Model`.

    Returns:
        A new `keras.Model` (the original is untouched).

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8, 1)),
    ...                           keras_convx.layers.GroupLiftConv2D(2, 3, group="p4")])
    >>> folded = keras_convx.export.fold(model)
    >>> [type(layer).__name__ for layer in folded.layers]
    ['Conv2D']
    >>> x = np.random.rand(2, 8, 8, 1)
    >>> np.allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    True
    """
    return graph.rewrite(model, fold_layer)
