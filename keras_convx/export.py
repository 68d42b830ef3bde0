"""Export: fold keras_convx layers into core Keras layers (issue 9; ONNX and LiteRT export
follow).

`fold(model)` is the first step of every export route: an equivalent model in which every
layer that is, at inference, a plain convolution or batch norm becomes one, so exporters and
runtimes only see core Keras layers.
"""

import keras
import numpy as np

from keras_convx import pruning
from keras_convx.layers.group_conv import GroupBatchNormalization
from keras_convx.layers.group_conv import _GroupConvBase
from keras_convx.layers.log_polar import LogPolarConv2D
from keras_convx.layers.shared_basis import SharedBasisConv2D
from keras_convx.layers.synaptic import SynapticConv2D

__all__ = ["fold", "foldable"]


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def _conv(layer, filters, kernel, bias, padding=None, groups=1, name=None):
    """A core Conv2D carrying `kernel` / `bias` with the layer's geometry and activation."""
    conv = keras.layers.Conv2D(
        filters,
        tuple(kernel.shape[:2]),
        strides=tuple(layer.strides),
        padding=padding or layer.padding,
        data_format=layer.data_format,
        groups=groups,
        activation=keras.activations.serialize(layer.activation)
        if layer.activation is not None else None,
        use_bias=bias is not None,
        dtype=layer.dtype_policy,
        trainable=layer.trainable,
        name=name or layer.name,
    )
    weights = [kernel] + ([bias] if bias is not None else [])
    return conv, lambda new: new.set_weights(weights)


def _fold_log_polar(layer):
    if layer.pooling == "max":
        return None  # a max over regions is not a convolution
    kernel = _np(layer.dense_kernel())
    bias = None if layer.bias is None else _np(layer.bias)
    if layer.padding == "valid" or tuple(layer.strides) == (1, 1):
        return _conv(layer, layer.filters, kernel, bias, groups=layer.groups)
    # "same" at stride > 1 pads around the window centre ((k−1)//2 before), which Keras'
    # "same" does not: an explicit ZeroPadding2D, then a "valid" convolution.
    kh, kw = layer.kernel_size
    pads = (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))
    conv, set_conv = _conv(layer, layer.filters, kernel, bias, padding="valid",
                           groups=layer.groups, name=f"{layer.name}_conv")
    block = keras.Sequential(
        [keras.layers.ZeroPadding2D(pads, data_format=layer.data_format,
                                    name=f"{layer.name}_pad"), conv],
        name=layer.name,
    )
    return block, lambda new: set_conv(new.layers[-1])


def _fold_group_conv(layer):
    bias = layer.dense_bias()
    return _conv(layer, layer.filters * layer.order, _np(layer.dense_kernel()),
                 None if bias is None else _np(bias))


def _fold_shared_basis(layer):
    kernel, bias = layer.synthesized_kernel()
    return _conv(layer, layer.filters, _np(kernel), _np(bias))


def _fold_group_batch_norm(layer):
    order = layer.order
    bn = keras.layers.BatchNormalization(
        axis=-1 if layer.data_format == "channels_last" else 1,
        momentum=layer.momentum, epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
        dtype=layer.dtype_policy, trainable=layer.trainable, name=layer.name,
    )
    weights = [np.repeat(_np(v), order) for v in (layer.gamma, layer.beta) if v is not None]
    weights += [np.repeat(_np(layer.moving_mean), order),
                np.repeat(_np(layer.moving_variance), order)]
    return bn, lambda new: new.set_weights(weights)


_FOLDERS = (
    (SynapticConv2D, pruning._strip_replace),
    (LogPolarConv2D, _fold_log_polar),
    (_GroupConvBase, _fold_group_conv),
    (SharedBasisConv2D, _fold_shared_basis),
    (GroupBatchNormalization, _fold_group_batch_norm),
)


def _fold_layer(layer):
    for cls, folder in _FOLDERS:
        if isinstance(layer, cls):
            return folder(layer)
    return None


def foldable(layer):
    """Whether `fold` turns `layer` into core Keras layers."""
    if isinstance(layer, LogPolarConv2D):
        return layer.pooling != "max"
    return isinstance(layer, tuple(cls for cls, _ in _FOLDERS))


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

    Outputs are identical to the original model's in inference mode (up to float rounding of
    the different summation order). A shared `FilterBasis` becomes independent kernels.

    Args:
        model: a Functional or built Sequential `keras.Model`.

    Returns:
        A new `keras.Model` (the original is untouched).

    Example:

    >>> folded = keras_convx.export.fold(model)
    >>> np.allclose(folded.predict(x), model.predict(x), atol=1e-5)
    True
    """
    return pruning._rewrite(model, _fold_layer)
