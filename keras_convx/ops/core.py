"""Small `keras.ops` building blocks shared by every layer family."""

import math

import keras
import numpy as np

from keras_convx.arguments import pair as normalize_pair  # noqa: F401  (re-exported)
from keras_convx.ops import dispatcher
from keras_convx.ops import processes


def to_numpy(x, dtype=None):
    """A backend tensor or Keras variable as a NumPy array (of `dtype` if given): how the
    model tools read weights they rewrite."""
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=dtype)

def conv_output_length(length, k, stride, padding):
    """Output length of a convolution: ceil(length / stride) for "same", (length − k) // stride
    + 1 for "valid"; None stays None."""
    if length is None:
        return None
    if padding == "same":
        return (length - 1) // stride + 1
    return (length - k) // stride + 1


def conv_output_shape(input_shape, filters, kernel_size, strides, padding, data_format,
                      dilation_rate=(1, 1)):
    """Output shape of a 2-D convolution of a 4-D `input_shape` (batch included)."""
    spatial = input_shape[1:3] if data_format == "channels_last" else input_shape[2:4]
    out = [
        conv_output_length(n, (k - 1) * d + 1, s, padding)
        for n, k, s, d in zip(spatial, kernel_size, strides, dilation_rate)
    ]
    if data_format == "channels_last":
        return (input_shape[0], *out, filters)
    return (input_shape[0], filters, *out)


def window_slice(x, offset, window, strides=(1, 1), axes=(1, 2), counts=(None, None)):
    """The input entries that tap `offset` of every valid window reads: a strided slice.

    For a `window`-sized valid (unpadded) correlation with `strides`, tap `offset = (i, j)`
    of output position p reads input position `stride·p + offset`. The slice runs from
    `offset` and holds `(n − window) // stride + 1` entries. When the size n is unknown until
    run time (TensorFlow's retraced functions), the stop is counted from the end (`window − 1
    − offset` entries before it), so no static size is read. Goes through the dispatch point
    (`strided_slice`): on jax a `lax.slice`, which stays a slice for a symbolic image size
    (jax's export with a dynamic height/width) where `jnp` indexing becomes a gather.

    Args:
        x: tensor; `axes` are the two spatial axes (default (1, 2): channels_last).
        offset, window, strides: pairs of ints.
        counts: the output size per axis when the caller has it as a shape (static or
            symbolic): used as the slice's length, so that it is the same symbolic
            expression as the caller's (jax cannot prove `(n − 1)//2 + 1 == ⌈n/2⌉`).

    Example:

    >>> x = keras.ops.reshape(keras.ops.arange(25.0), (1, 5, 5, 1))
    >>> y = window_slice(x, (1, 2), (3, 3), (2, 2))[0, :, :, 0]   # rows 1, 3; columns 2, 4
    >>> keras.ops.convert_to_numpy(y).tolist()
    [[7.0, 9.0], [17.0, 19.0]]
    """
    bounds = [(0, None, 1)] * len(x.shape)
    for axis, start, size, step, count in zip(axes, offset, window, strides, counts):
        n = x.shape[axis]
        if count is not None:
            bounds[axis] = (start, start + step * (count - 1) + 1, step)
        elif n is None:  # unknown until run time: count from the end
            stop = start - (size - 1)
            bounds[axis] = (start, stop if stop < 0 else None, step)
        else:  # an int, or a symbolic dimension (jax export)
            bounds[axis] = (start, start + (n - size) // step * step + 1, step)
    return strided_slice(x, bounds)


def _strided_slice(x, bounds):
    return x[tuple(slice(*b) for b in bounds)]


def strided_slice(x, bounds):
    """`x[start:stop:step, ...]` for one `(start, stop or None, step)` per axis, through the
    dispatch point (`strided_slice`; see `window_slice`)."""
    return dispatcher.dispatch("strided_slice", _strided_slice)(x, bounds)


def _keras_pad(x, widths):
    return keras.ops.pad(x, widths)


def zero_pad(x, widths):
    """`keras.ops.pad(x, widths)` with zeros, through the dispatch point (`zero_pad`).

    On torch it is `torch.nn.functional.pad`: Keras 3.15's `ops.pad` makes a new named
    `Operation` per call, and torch.compile guards on Keras' global name counter, so a
    compiled step holding a pad was recompiled on every call (a ZeroPadding2D + Conv2D step
    measured 290 ms against 5 ms without the pad on a 2-core CPU; E4 ~2.5 s a step).

    Args:
        x: tensor; widths: one `(before, after)` pair of ints per axis.
    """
    return dispatcher.dispatch("zero_pad", _keras_pad)(x, tuple(tuple(w) for w in widths))


def conv2d(x, kernel, strides=1, padding="valid", data_format="channels_last", dilation_rate=1):
    """`keras.ops.conv` for 4-D inputs that runs `channels_first` on every backend.

    TensorFlow's CPU kernels have no NCHW convolution; there the input is transposed to
    channels_last, convolved and transposed back (the same result, on every device).

    Args:
        x: (B, H, W, C) or (B, C, H, W) tensor, per `data_format`.
        kernel: (kh, kw, C / groups, filters) tensor.
        strides, padding, dilation_rate: as in `keras.ops.conv`.
        data_format: "channels_last" or "channels_first".
    """
    if data_format == "channels_first" and keras.backend.backend() == "tensorflow":
        x = keras.ops.transpose(x, (0, 2, 3, 1))
        y = keras.ops.conv(x, kernel, strides, padding, "channels_last", dilation_rate)
        return keras.ops.transpose(y, (0, 3, 1, 2))
    return keras.ops.conv(x, kernel, strides, padding, data_format, dilation_rate)


def matmul(a, b):
    """`keras.ops.matmul(a, b)`, float64 kept float64: Keras 3.15's type rules turn 64 bits
    into 32, so its torch `matmul` returns a float64 product as float32."""
    y = keras.ops.matmul(a, b)
    if keras.backend.standardize_dtype(a.dtype) == "float64":
        y = keras.ops.cast(y, "float64")
    return y


def matmul_last(x, w):
    """`x @ w` over the last axis of `x` (any rank ≥ 2) as ONE 2-D matrix product.

    The rows are flattened first: TensorFlow runs a 4-D × 2-D `matmul` as a batched product,
    measured 1.4× slower (forward + backward, 16·32·32 rows × 832 → 64, 2-core CPU). Inside
    `portable_mode()` it is a 1×1 convolution for 4-D `x` (channels_last) and the plain
    `matmul` otherwise (jax2onnx cannot map a reshape to (−1, K) with a symbolic batch back to
    the input's axes).

    Args:
        x: (..., K) tensor; w: (K, N) tensor.

    Returns:
        (..., N) tensor.
    """
    if dispatcher.portable():
        if len(x.shape) == 4:
            # A 1×1 convolution: every exporter's plainest op. (A 4-D × 2-D `matmul` became a
            # TensorFlow tensordot, whose reshapes tf2onnx merged with the caller's next
            # reshape into one ONNX Runtime rejects, for some weight values.)
            return keras.ops.conv(x, keras.ops.reshape(w, (1, 1, *w.shape)), 1, "valid",
                                  "channels_last")
        return keras.ops.matmul(x, w)
    lead = keras.ops.shape(x)[:-1]
    # K from the weight: inside a traced function (TensorFlow's fit) x's last axis can be None.
    y = matmul(keras.ops.reshape(x, (-1, w.shape[0])), w)
    return keras.ops.reshape(y, (*lead, w.shape[-1]))


def _keras_constant(value, dtype, like):
    return keras.ops.convert_to_tensor(value, dtype=dtype)


def constant(value, dtype, like):
    """A NumPy array (a table, a fixed kernel) as a tensor of `dtype`, beside tensor `like`.

    Use it, not `keras.ops.convert_to_tensor`, for the constants a layer's `call` converts:
    on torch it is `torch.as_tensor` on `like`'s device (the `constant` fast path), because
    Keras 3.15's conversion reads the array's `dtype`, which torch.compile cannot trace (each
    conversion was a graph break, and dynamo then ran whole functions eagerly).

    Args:
        value: a NumPy array or Python number.
        dtype: the tensor's dtype (a Keras dtype name or a backend dtype).
        like: a tensor of the computation (its device is used where the backend has one).

    Example:

    >>> x = keras.ops.ones((2, 3))
    >>> keras.ops.convert_to_numpy(x * constant(np.arange(3), x.dtype, x)).tolist()
    [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
    """
    return dispatcher.dispatch("constant", _keras_constant)(value, dtype, like)


def static_take(x, indices, axis=0):
    """`keras.ops.take(x, indices, axis)` for a static NumPy index array.

    Inside `keras_convx.ops.portable_mode()` (exports) the gather is written as a product
    with a constant one-hot matrix instead — exact, and traced by every exporter (a gather
    breaks PyTorch's ONNX export).
    """
    indices = np.asarray(indices)
    if not dispatcher.portable():
        # The reshape makes TensorFlow's gradient dense: a gather's gradient is IndexedSlices,
        # which tf.distribute all-gathers per replica, and reaching a variable that way
        # breaks MirroredStrategy's collectives; a reshape's gradient densifies it.
        return keras.ops.take(keras.ops.reshape(x, tuple(x.shape)), indices, axis=axis)
    axis = axis % len(x.shape)
    one_hot = np.eye(x.shape[axis], dtype="float32")[indices.reshape(-1)].T  # (n, m)
    one_hot = keras.ops.cast(one_hot, x.dtype)
    last = len(x.shape) - 1  # explicit axes: a negative permutation breaks torch's ONNX
    y = keras.ops.tensordot(keras.ops.moveaxis(x, axis, last), one_hot, axes=1)
    y = keras.ops.cast(keras.ops.moveaxis(y, last, axis), x.dtype)  # (torch: float64 → float32)
    if indices.ndim != 1:
        y = keras.ops.reshape(y, (*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))
    return y


def _reduce_extremum(x, axis, keepdims, largest):
    x = keras.ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" not in dtype:  # (±inf below is a float bound)
        raise TypeError(f"reduce_max/reduce_min take float tensors. Received: dtype={dtype}")
    if keras.backend.backend() == "tensorflow":
        # Keras' TensorFlow max/min assert, when eager, that x has elements at all, even where
        # the reduced axes have some (an empty batch); with an `initial` they reduce at once.
        bound = -math.inf if largest else math.inf
        reduce = keras.ops.max if largest else keras.ops.min
        return reduce(x, axis=axis, keepdims=keepdims, initial=bound)
    # (torch's Keras max/min refuse any empty tensor; amax/amin reduce axis by axis)
    reduce = keras.ops.amax if largest else keras.ops.amin
    return reduce(x, axis=axis, keepdims=keepdims)


def reduce_max(x, axis, keepdims=False):
    """The largest float value along `axis` (an int or a tuple), for any batch size.

    `keras.ops.max` and `amax` refuse a tensor with no elements on TensorFlow (eagerly) and
    torch (`max`) even where the reduced axes are not empty: an empty batch, a filtered or
    last shard, reduced over its other axes, must give an empty result.

    Raises:
        TypeError: for a tensor that is not of a float dtype.

    Example:

    >>> keras.ops.convert_to_numpy(reduce_max(keras.ops.zeros((0, 3, 4)), axis=2)).shape
    (0, 3)
    >>> keras.ops.convert_to_numpy(reduce_max(keras.ops.eye(3), axis=(0, 1))).tolist()
    1.0
    """
    return _reduce_extremum(x, axis, keepdims, largest=True)


def reduce_min(x, axis, keepdims=False):
    """The smallest float value along `axis`, for any batch size (see `reduce_max`).

    Example:

    >>> keras.ops.convert_to_numpy(reduce_min(keras.ops.zeros((0, 2)), axis=1)).shape
    (0,)
    """
    return _reduce_extremum(x, axis, keepdims, largest=False)


def replicas_in_sync():
    """How many replicas each compute their own share of a training step's loss.

    Under `tf.distribute` (TensorFlow) every replica computes the loss of its local batch and
    the gradients are summed, so Keras divides its compiled loss by this number; an extra loss
    term added in `compute_loss` must be divided the same way (and multiplied back for what
    is reported). JAX's `keras.distribution` computes one global loss: 1 there, as on torch.
    """
    return dispatcher.backend_query("replicas_in_sync", 1)


def moments(x, axes, synchronized=False):
    """Mean and variance of `x` over `axes` (removed), as `keras.ops.moments`.

    With `synchronized=True` the statistics cover the whole global batch of a data-parallel
    step: under `tf.distribute` through Keras' own all-reduce (`keras.ops.moments(...,
    synchronized=True)`); under `torch.distributed` (a process group of more than one
    process, e.g. `DistributedDataParallel` training) the per-process sums, sums of squares
    and counts are summed by torch's differentiable `all_reduce`, so the gradients flow
    through the global statistics; JAX's `keras.distribution` computes on global arrays, so
    its plain moments are already global. Elsewhere the local moments.

    Args:
        x: a tensor.
        axes: the axes reduced (a list or tuple of ints).
        synchronized: bool, the global batch's statistics in data-parallel training.

    Returns:
        `(mean, variance)`, the shape of `x` without `axes`.

    Example:

    ```python
    mean, variance = moments(fields, (0, 1, 2, 4), synchronized=True)
    ```
    """
    if not synchronized or keras.backend.backend() == "jax":
        return keras.ops.moments(x, axes=axes)
    if keras.backend.backend() == "tensorflow":
        return keras.ops.moments(x, axes=axes, synchronized=True)
    if keras.backend.backend() != "torch" or processes.job("torch")[1] == 1:
        return keras.ops.moments(x, axes=axes)
    shape = keras.ops.shape(x)
    total = keras.ops.sum(x, axis=axes)
    squares = keras.ops.sum(keras.ops.square(x), axis=axes)
    count = keras.ops.full_like(total, math.prod(shape[a] for a in axes))
    summed = dispatcher.backend_query("cross_process_sum", None,
                                      args=(keras.ops.stack([total, squares, count]),))
    mean = summed[0] / summed[2]
    return mean, keras.ops.relu(summed[1] / summed[2] - keras.ops.square(mean))  # (dtype kept)


def _keep_everything(fn, x, variables):
    return fn(x)


def bind_variables(fn, variables):
    """`(pure, values)`: `pure(x, *values)` runs `fn(x)` with `variables` read as `values`
    (a `keras.StatelessScope`), and `values` are the variables' values now — in a stateless
    call the ones it passed, in a layer's autocast scope rounded as it rounds them. What the
    backends' `recompute` differentiates and reruns, so the rerun sees the forward pass's
    weights and their gradients flow to whatever those came from."""
    variables = tuple(variables)

    def pure(x, *values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(x)

    return pure, tuple(v.value for v in variables)


def recompute(fn, x, variables):
    """`fn(x)` whose backward pass keeps only `x` and recomputes the rest of `fn`.

    A layer's intermediates (E4's encoded and generated maps, the log-polar pooled maps) are
    otherwise kept from its forward pass to its backward pass, layer after layer of a
    network; with this, each layer keeps its input alone and runs its forward pass a second
    time during the backward pass, as a function of `x` and of its weights' values
    (`bind_variables`). Dispatch point
    `recompute`: tensorflow `tf.recompute_grad`, torch `torch.utils.checkpoint`
    (non-reentrant; not inside torch.compile, where `fn` runs as it is), jax a custom VJP whose
    recomputation depends on the cotangent (XLA's CPU scheduler was measured to move
    `jax.checkpoint`'s recomputation into the forward pass, keeping everything). The
    `keras.ops` reference path (`reference_mode()`, portable mode) and symbolic calls keep
    everything: the same values and gradients, without the saving.

    Args:
        fn: a function of one tensor returning one tensor. It reads no Keras variable but
            `variables`, assigns none, adds no loss and draws no random numbers (it runs
            twice), casts the weights it reads itself (the rerun runs outside the layer's
            autocast scope), and is differentiated in reverse mode only.
        x: its input tensor.
        variables: the Keras variables `fn` reads.
    """
    if isinstance(x, keras.KerasTensor):
        return fn(x)
    return dispatcher.dispatch("recompute", _keep_everything)(fn, x, tuple(variables))
