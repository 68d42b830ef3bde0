"""E4Conv2D's computation from the layer's input, as one op (dispatch point `e4_apply`).

The layer's weights are first turned into small matrices (`E4Conv2D` does that): the group
1×1 reduction `reduce` (C, C_r·|G|), the group norm's γ and β (C_r, 1 or |G|), the steered
generator `block` (C_r·|G| + 1, k²·A, its last row the bias) and the group 1×1 encoder
`encoder` (C, M·A). `e4_apply` then runs, on a channels_last input `x` (B, H, W, C):

    features = [relu(GroupNorm(pool(x) @ reduce)), 1]     (`generator_features`)
    v        = x @ encoder, viewed as (B, H, W, M, A)
    y        = generate_and_aggregate(v, features, block, k, strides)   (B, H', W', M, A)

The reference (`e4_apply_reference`) is exactly that, each step through its own dispatch
point. A backend may fuse the whole of it: the jax, tensorflow and torch CPU paths run it by
bands of rows and keep only `x` for the backward pass (`keras_convx.ops._jax`,
`keras_convx.ops._tensorflow`, `keras_convx.ops._torch`).
"""

import keras

from keras_convx.ops import group as gops
from keras_convx.ops.core import matmul_last
from keras_convx.ops.dispatcher import dispatch
from keras_convx.ops.dispatcher import reference_only


def average_pool_2x2_same(x):
    """2×2 average pooling with stride 2 and "same" padding of channels_last `x`: a window
    past the bottom or right edge averages its pixels inside the image, as Keras' "same".

    Written as a "valid" pooling of `x` with its last row and column repeated once (such a
    window holds one image pixel and its copy). Keras' torch backend pads "same" poolings
    with replicate padding, whose backward torch.compile's inductor lowered with wrong
    strides: a compiled training step failed at odd image sizes.

    Example:

    >>> x = keras.ops.reshape(keras.ops.arange(3.0), (1, 1, 3, 1))
    >>> keras.ops.convert_to_numpy(average_pool_2x2_same(x)).ravel().tolist()
    [0.5, 2.0]
    """
    x = keras.ops.concatenate([x, x[:, -1:]], axis=1)
    x = keras.ops.concatenate([x, x[:, :, -1:]], axis=2)
    return keras.ops.average_pool(x, 2, 2, "valid", "channels_last")


def generator_features(x, reduce, gamma, beta, strides, epsilon):
    """E4's generator input (B, H', W', C_r·|G| + 1) for channels_last `x`: `x` (at `strides`
    2, average-pooled 2×2 by `average_pool_2x2_same`; `strides` is 1 or 2), reduced
    (`x @ reduce`), normalised per image and reduced field in float32
    (`ops.group.group_norm_relu`), cast back, and a column of ones (the bias' row of `block`).

    Example:

    >>> x = keras.random.normal((2, 8, 8, 4))
    >>> f = generator_features(x, keras.ops.ones((4, 4)), keras.ops.ones((1, 1)),
    ...                        keras.ops.zeros((1, 1)), 1, 1e-5)   # (2, 8, 8, 5)
    """
    if strides not in (1, 2):
        raise ValueError(f"Expected strides to be 1 or 2. Received: strides={strides}")
    if strides == 2:
        x = average_pool_2x2_same(x)
    t = keras.ops.cast(matmul_last(x, reduce), "float32")
    t = gops.group_norm_relu(t, gamma, beta, gamma.shape[0], epsilon)
    t = keras.ops.cast(t, x.dtype)
    shape = keras.ops.shape(t)
    return keras.ops.concatenate([t, keras.ops.ones((shape[0], shape[1], shape[2], 1), t.dtype)], -1)


def e4_apply_reference(x, reduce, gamma, beta, block, encoder, k, strides, epsilon,
                       implementation="auto"):
    """`e4_apply` step by step (its dispatch point's reference)."""
    features = generator_features(x, reduce, gamma, beta, strides, epsilon)
    a = block.shape[-1] // (k * k)
    shape = keras.ops.shape(x)
    v = keras.ops.reshape(matmul_last(x, encoder),
                          (shape[0], shape[1], shape[2], encoder.shape[-1] // a, a))
    return gops.generate_and_aggregate(v, features, block, k, (strides, strides), implementation)


def e4_apply(x, reduce, gamma, beta, block, encoder, k, strides, epsilon, implementation="auto"):
    """E4's output (B, H', W', M, A) from its channels_last input `x` and weight matrices (see
    the module's docstring). `implementation` other than "auto", and
    `keras_convx.ops.reference_mode()`, take the reference step by step.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 4))
    >>> block = keras.random.normal((5, 9 * 4))       # k = 3, A = 4 slots
    >>> y = e4_apply(x, keras.ops.ones((4, 4)), keras.ops.ones((1, 1)), keras.ops.zeros((1, 1)),
    ...              block, keras.random.normal((4, 8)), 3, 1, 1e-5)   # (2, 8, 8, 2, 4)
    """
    if implementation != "auto" or reference_only():
        return e4_apply_reference(x, reduce, gamma, beta, block, encoder, k, strides, epsilon,
                                  implementation)
    return dispatch("e4_apply", e4_apply_reference)(x, reduce, gamma, beta, block, encoder, k,
                                                    strides, epsilon)
