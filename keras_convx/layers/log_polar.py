"""Log-polar space convolution: `LogPolarConv2D`."""

import warnings

import keras
import numpy as np

from keras_convx import arguments
from keras_convx._registry import register
from keras_convx.layers._conv_base import BaseConv2D
from keras_convx.ops import log_polar as lp
from keras_convx.ops.core import conv2d, recompute

IMPLEMENTATIONS = ("auto", "dense", "pool", "max")


@register
class LogPolarConv2D(BaseConv2D):
    """2D log-polar space convolution (LPSC).

    The k_h×k_w window around every pixel is cut into `rings` distance levels (radii growing by
    `growth_rate`) × `sectors` direction sectors; the input is pooled over each region (mean by
    default) and the pooled values are weighted per (region, input channel, filter). A 9×9 or
    11×11 receptive field thus costs `C_in·filters·(rings·sectors + 1)` weights instead of
    `C_in·filters·k²`. With `center=True` (default) the centre pixel also gets its own weight,
    as in the paper's classification models:

    `y[p, o] = Σ_c Σ_{l,a} W[l, a, c, o]·pool_{q∈Ω(l,a)} x[s·p + q, c] + Σ_c w0[c, o]·x[s·p, c] + b[o]`

    The region map is exactly the official implementation's (`keras_convx.ops.log_polar_regions`),
    so weights trained with it can be imported (`from_official_weights`).

    Args:
        filters: int, the number of output channels.
        kernel_size: int or tuple of 2 ints, the window (e.g. 9 or 11). Non-square windows use
            elliptical rings.
        rings: int ≥ 1, number of distance levels (`Lr`).
        sectors: int ≥ 1, number of direction sectors (`Lθ`).
        growth_rate: float > 1, ratio between consecutive ring radii (`g`).
        strides: int or tuple of 2 ints.
        padding: `"same"` (zero padding anchored at the window centre: output position p sees
            the window centred on input pixel stride·p, like the paper and the official code;
            output size ceil(H / stride)) or `"valid"`.
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        pooling: `"mean"` (default; padded zeros count, so every region's size is fixed),
            `"sum"` or `"max"`.
        center: bool, give the centre pixel its own extra weight (default True).
        initial_angle: float, rotation of the sector grid in radians (`φ`).
        groups: int, input and output channels split into this many independent groups.
        activation: activation applied to the output, or None.
        use_bias: bool.
        implementation: `"auto"` (default), `"dense"` (synthesised k_h×k_w kernel, one
            convolution), `"pool"` (region pooling then 1×1 mixing) or `"max"` (the only
            path for `pooling="max"`). All are exact; `"auto"` picks the cheaper by the cost
            model `keras_convx.ops.log_polar.choose_implementation` (max → `"max"`).
        recompute: bool (default False). True keeps only the layer's input for the backward
            pass and runs the convolution a second time there
            (`keras_convx.ops.core.recompute`), instead of keeping the pooled maps
            (`rings·sectors + 1` times the input on the pool paths) until the backward pass,
            layer after layer. Same values and gradients. Torch under `jit_compile=True` and
            the `reference_mode()` / `portable_mode()` paths keep everything.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in `keras.layers.Conv2D`;
            the kernel ones apply to the region kernel and to the centre kernel.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with `channels_last`,
        `(batch, channels, rows, cols)` with `channels_first`.

    Output shape:
        4D tensor with `filters` channels; rows and cols as for `keras.layers.Conv2D`.

    Weights:
        `kernel` `(rings, sectors, channels / groups, filters)`, `center_kernel`
        `(channels / groups, filters)` if `center`, `bias` `(filters,)` if `use_bias`.

    Example:

    >>> x = np.random.rand(4, 32, 32, 3).astype("float32")
    >>> layer = LogPolarConv2D(16, 9, rings=2, sectors=6, growth_rate=3.0)
    >>> layer(x).shape
    (4, 32, 32, 16)
    >>> layer.count_params()  # 3·16·(2·6 + 1) + 16, against 3·16·81 + 16 for a 9×9 Conv2D
    640

    Reference:
        Bing Su, Ji-Rong Wen. "Log-Polar Space Convolution Layers". NeurIPS 2022.
    """

    conv_arguments = ("groups",)
    # For keras_convx.pruning.make_prunable: {weight: (output axes, input axes, link)}; the
    # ring/sector kernel and the centre weight of one connection are pruned together.
    PRUNABLE_WEIGHTS = {"kernel": ((-1,), (-2,), "connection"),
                        "center_kernel": ((-1,), (-2,), "connection")}

    def __init__(
        self,
        filters,
        kernel_size,
        rings=2,
        sectors=6,
        growth_rate=3.0,
        strides=1,
        padding="same",
        data_format=None,
        pooling="mean",
        center=True,
        initial_angle=0.0,
        groups=1,
        activation=None,
        use_bias=True,
        implementation="auto",
        recompute=False,
        **kwargs,
    ):
        super().__init__(filters, strides=strides, padding=padding, data_format=data_format,
                         groups=groups, activation=activation, use_bias=use_bias, **kwargs)
        (
            self.kernel_size,
            self.rings,
            self.sectors,
            self.growth_rate,
            self.initial_angle,
        ) = lp.validate_region_args(kernel_size, rings, sectors, growth_rate, initial_angle)
        self.pooling = arguments.choice("pooling", pooling, lp.POOLINGS)
        self.center = arguments.boolean("center", center)
        self.implementation = arguments.choice("implementation", implementation, IMPLEMENTATIONS)
        self.recompute = arguments.boolean("recompute", recompute)
        if self.pooling == "max" and self.implementation in ("dense", "pool"):
            raise ValueError(
                f"pooling='max' has no {self.implementation!r} path; use implementation='max' or "
                f"'auto'. Received: implementation={implementation!r}"
            )
        if self.pooling != "max" and self.implementation == "max":
            raise ValueError(
                "implementation='max' needs pooling='max'. "
                f"Received: implementation={implementation!r}, pooling={pooling!r}"
            )
        self._pmatrix = lp.pooling_matrix(
            self.kernel_size,
            self.rings,
            self.sectors,
            self.growth_rate,
            self.initial_angle,
            self.pooling,
            self.center,
        )
        empty = lp.empty_regions(self.kernel_size, self.rings, self.sectors, self.growth_rate,
                                 self.initial_angle)
        if empty:
            # Python's default warning filter shows each distinct message once.
            warnings.warn(
                f"LogPolarConv2D(kernel_size={self.kernel_size}, rings={self.rings}, "
                f"sectors={self.sectors}, growth_rate={self.growth_rate}): {len(empty)} of "
                f"{self.rings * self.sectors} regions hold no pixel of the window, so their "
                "weights are dead parameters (keras_convx.ops.log_polar_empty_regions lists "
                "them). Use fewer rings/sectors or a larger kernel_size.", stacklevel=2)

    # -- static maths -------------------------------------------------------------------------

    @property
    def regions(self):
        """(ring index map, sector index map) of the window, NumPy int arrays."""
        return lp.log_polar_regions(
            self.kernel_size, self.rings, self.sectors, self.growth_rate, self.initial_angle
        )

    @property
    def pooling_matrix(self):
        """The static (k_h·k_w, rings·sectors [+1]) pooling matrix (NumPy, read-only)."""
        return self._pmatrix


    # -- weights ------------------------------------------------------------------------------

    def build(self, input_shape):
        channels = self.input_channels(input_shape)
        cin = channels // self.groups
        self.kernel = self.add_kernel("kernel", (self.rings, self.sectors, cin, self.filters))
        self.center_kernel = None
        if self.center:
            self.center_kernel = self.add_kernel("center_kernel", (cin, self.filters))
        self.add_bias()
        self.lock_channels(channels)

    # -- forward ------------------------------------------------------------------------------

    def resolved_implementation(self):
        """The path `call` takes: "dense", "pool" or "max" (resolving "auto")."""
        if self.implementation != "auto":
            return self.implementation
        if self.pooling == "max":
            return "max"
        return lp.choose_implementation(self.kernel_size, self.filters, self.groups, self._pmatrix.shape[1])

    def equivalent_conv(self):
        """The equivalent ordinary convolution: `(kernel, bias)`, the `(k_h, k_w,
        C_in/groups, filters)` Conv2D kernel (each region's weight on its pixels) and the bias
        or None; None for `pooling="max"` (a max over regions is not a convolution). With
        "same" padding and stride > 1 the window is anchored at its centre, which Keras'
        "same" is not: then `(kernel, bias, pads)`, the explicit zero padding before a
        "valid" convolution."""
        if self.pooling == "max":
            return None
        kernel = lp.synthesize_kernel(self.kernel, self.center_kernel, self._pmatrix, self.kernel_size)
        if self.padding == "same" and tuple(self.strides) != (1, 1):
            return kernel, self.bias, lp.same_pads(self.kernel_size)
        return kernel, self.bias

    def dense_kernel(self):
        """Deprecated: `equivalent_conv()[0]`."""
        warnings.warn("dense_kernel() is deprecated: use equivalent_conv()[0].", DeprecationWarning, 2)
        if self.pooling == "max":
            raise ValueError("pooling='max' has no dense kernel equivalent.")
        return self.equivalent_conv()[0]

    def convolution_op(self, inputs):
        if self.recompute:
            return recompute(self.convolve, inputs, self.variables)
        return self.convolve(inputs)

    def convolve(self, inputs):
        """The convolution without bias (`convolution_op` runs it, through
        `ops.core.recompute` when the layer recomputes)."""
        x = keras.ops.cast(inputs, self.compute_dtype)
        kernel = keras.ops.cast(self.kernel, self.compute_dtype)
        center = None if self.center_kernel is None else keras.ops.cast(self.center_kernel, self.compute_dtype)
        path = self.resolved_implementation()
        if path == "dense":
            dense = lp.synthesize_kernel(kernel, center, self._pmatrix, self.kernel_size)
            if self.padding == "same" and self.strides == (1, 1):
                # At stride 1 Keras' "same" pads exactly like the centre-anchored padding.
                y = conv2d(x, dense, 1, "same", self.data_format)
            else:
                if self.padding == "same":
                    x = lp.pad_same(x, self.kernel_size, self.data_format)
                y = conv2d(x, dense, self.strides, "valid", self.data_format)
        else:
            if self.padding == "same":
                x = lp.pad_same(x, self.kernel_size, self.data_format)
            if self.data_format == "channels_first":
                x = keras.ops.transpose(x, (0, 2, 3, 1))
            y = lp.pool_and_mix(x, self._pmatrix, kernel, center, self.kernel_size, self.strides,
                                self.pooling, self.groups)
            if self.data_format == "channels_first":
                y = keras.ops.transpose(y, (0, 3, 1, 2))
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "rings": self.rings,
                "sectors": self.sectors,
                "growth_rate": self.growth_rate,
                "pooling": self.pooling,
                "center": self.center,
                "initial_angle": self.initial_angle,
                "implementation": self.implementation,
                "recompute": self.recompute,
            }
        )
        return config


def official_tile_position(ring, sector, rings, sectors):
    """(row, col) of region (ring, sector) in the official (2·rings) × (sectors/2) tile."""
    half = sectors // 2
    if sector < half:
        return rings - 1 - ring, half - 1 - sector
    return rings + ring, sector - half


def from_official_weights(tile_weight, center_weight=None, center_bias=None, tile_bias=None):
    """Convert the official PyTorch LPSC weights to `LogPolarConv2D`'s layout.

    The official layer writes the pooled regions of every position into a
    (2·rings) × (sectors/2) tile and convolves it with a Conv2d of kernel = stride = tile
    size; region (l, a) sits at tile row `rings−1−l`, column `sectors/2−1−a` when
    a < sectors/2, else at row `rings+l`, column `a−sectors/2`. The centre weight and the
    bias come from the separate 1×1 `centerconv`.

    Args:
        tile_weight: array (C_out, C_in, 2·rings, sectors/2), the tile conv's weight.
        center_weight: array (C_out, C_in, 1, 1) of the centre 1×1 conv, or None.
        center_bias: array (C_out,) of the centre conv, or None.
        tile_bias: array (C_out,) of the tile conv if it has one (added to the bias).

    Returns:
        A list of arrays for `layer.set_weights` of a `LogPolarConv2D(C_out, ..., rings,
        sectors, center=center_weight is not None, use_bias=<any bias given>)`.

    Every value may be a NumPy array, a backend tensor or a `torch.nn.Parameter` (straight
    from the official model's `state_dict()` or `named_parameters()`).

    Example:

    ```python
    layer = LogPolarConv2D(16, 9, rings=2, sectors=6, growth_rate=3.0)
    layer.build((None, 32, 32, 3))
    layer.set_weights(from_official_weights(
        sd["conv1.weight"], sd["centerconv1.weight"], sd["centerconv1.bias"], sd["conv1.bias"]))
    ```
    """
    tile_weight = arguments.array("tile_weight", tile_weight, ndim=4)
    cout, cin, two_rings, half = tile_weight.shape
    if two_rings % 2:
        raise ValueError(f"Expected an even tile height 2·rings. Received: tile_weight.shape={tile_weight.shape}")
    rings, sectors = two_rings // 2, 2 * half
    kernel = np.zeros((rings, sectors, cin, cout), tile_weight.dtype)
    for ring in range(rings):
        for sector in range(sectors):
            row, col = official_tile_position(ring, sector, rings, sectors)
            kernel[ring, sector] = tile_weight[:, :, row, col].T
    weights = [kernel]
    if center_weight is not None:
        center_weight = arguments.array("center_weight", center_weight)
        if center_weight.shape[:2] != (cout, cin):
            raise ValueError(
                f"Expected center_weight of shape ({cout}, {cin}, 1, 1). "
                f"Received: center_weight.shape={center_weight.shape}"
            )
        weights.append(center_weight.reshape(cout, cin).T.copy())
    given = (("center_bias", center_bias), ("tile_bias", tile_bias))
    biases = [arguments.array(name, b, ndim=1) for name, b in given if b is not None]
    if biases:
        weights.append(np.sum(biases, axis=0))
    return weights
