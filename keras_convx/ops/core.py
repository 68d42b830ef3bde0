"""Small `keras.ops` building blocks shared by every layer family."""

import keras


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
