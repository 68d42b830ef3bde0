"""The efficient equivariant E4 layer: `E4Conv2D`."""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers import group_conv
from keras_convx.ops import e4 as e4ops
from keras_convx.ops import group as gops
from keras_convx.ops.core import matmul_last, recompute


@register
class E4Conv2D(keras.layers.Layer):
    """E4 layer (He et al., "Efficient Equivariant Network", NeurIPS 2021), on p4, p4m or any cN / dN.

    An equivariant, input-dependent k×k convolution. For a group feature map f with C_in
    fields, C_r = ⌊C_in / reduction_ratio⌋ and `slices` groups of `filters / slices` output
    fields that share one generated kernel:

    1. Generator: `t = ReLU(GroupNorm(GroupConv1x1(C_in → C_r)(f)))` — each GroupNorm group is
       one field's |G| copies, normalised over (|G|, H, W) with ONE γ, β per field — then
       `κ = t · W_gen + b_gen` (a dense map C_r → k²·slices shared by all group elements),
       viewed as (slices, k, k, |G|) per pixel. With strides > 1 the generator sees the
       average-pooled input.
    2. Steering: `K[σ, g] = T_g(κ[σ, :, :, g])`, the spatial transform of element g — a
       static permutation of the k² axis (folded into `W_gen`'s columns, so it costs nothing);
       for angles off the 90° grid (cN/dN with N not dividing 4) the rotation through the
       steerable basis of `GroupConv2D`, also folded into `W_gen` and `b_gen`.
    3. Encoder: `V = GroupConv1x1(C_in → filters)(f)`, no bias.
    4. Aggregation: `y[σ·M + m, g, x] = Σ_{i,j} K[σ, g, x][i, j] · V[σ·M + m, g, x·s + (i − p, j − p)]`,
       zero padding p = (k − 1)/2, M = filters / slices.

    The layer is exactly equivariant at stride 1 (`keras_convx.analysis.equivariance_error`).
    The aggregation runs through `keras_convx.ops.group.aggregate`: k² shifted
    multiply-adds that never build the k²-times larger patch tensor (compiled per backend
    where that is faster); `keras_convx.ops.reference_mode()` switches to the patch form. On
    the CPU at stride 1 (jax and tensorflow: with a static image size; torch: in eager mode)
    the whole layer (steps 1–4) runs by bands of rows in one op
    (`keras_convx.ops.e4.e4_apply`) that keeps only the layer's input for the backward pass
    (tensorflow inside `jit_compile=True`: the bands are a `tf.while_loop`): a one-layer
    step's memory on jax 1.04–1.35× a `GroupConv2D`'s instead of 1.8–2.2× (four layers
    1.04–1.08×), for up to +19% step time at 32–64 px; on tensorflow 1.0–2.3× (8 fields;
    1.0–1.44× at 16) instead of 3.7–13.3× step by step, under `jit_compile=True` 1.16–1.46×
    XLA's bytes instead of 2.6–3.6× (four layers 1.13–1.25× instead of 5.9–6.6×); on torch
    1.0–1.36× instead of 1.5–3.1× (8–32 fields), −9 to +19% time at 64–128 px, up to +40% at
    32 px (benchmarks/RESULTS.md, "E4 as images grow").
    `implementation="shifts"` runs the layer step by step in `keras.ops`.

    `official_compat=True` gives each orientation copy its own GroupNorm γ, β, as the official
    PyTorch code does, so its trained weights can be loaded. That form is NOT exactly
    equivariant once γ, β differ across copies (the default, tied form is).

    Args:
        filters: int, output fields (`filters·|G|` channels); divisible by `slices`.
        kernel_size: odd int, the generated kernel's size k.
        group: `"p4"` (4 rotations, default), `"p4m"` (4 rotations × mirror, |G| = 8),
            `"cN"` (N rotations, |G| = N) or `"dN"` (N rotations × mirror, |G| = 2N), N ≥ 1;
            `"c4"` and `"d4"` give p4's and p4m's results.
        reduction_ratio: number ≥ 1, the generator's channel reduction r (C_r = ⌊C_in / r⌋ ≥ 1).
        slices: int ≥ 1 dividing `filters`, the number of generated kernels per pixel
            (the official code's `groups` argument is `filters / slices`, the fields per slice).
        strides: 1 or 2 (int or pair); stride 2 averages the generator's input over 2×2 and
            samples the aggregation every second pixel ("same"-style output size ceil(H / 2)).
        data_format: `"channels_last"` or `"channels_first"`; default
            `keras.config.image_data_format()`.
        official_compat: bool, untied GroupNorm affine (see above).
        epsilon: float > 0, the GroupNorm epsilon (1e-5 as in PyTorch).
        implementation: the aggregation: `"auto"` (default; the ops dispatch points pick the
            backend's fast paths: the whole layer by bands of rows on the CPU (at stride 2 on
            torch's, the generation + aggregation by bands)), `"shifts"` (step by
            step, k² shifted multiply-adds in `keras.ops`) or `"patches"` (the reference
            through the k²-times larger patch tensor). All are exact.
        recompute: bool (default False). True keeps only the layer's input for the backward
            pass and runs the layer's forward pass a second time there
            (`keras_convx.ops.core.recompute`: `tf.recompute_grad`, `torch.utils.checkpoint`,
            a custom VJP on jax). A network of E4 layers otherwise holds each layer's encoded
            map, generator maps and pre-transpose output until its backward pass (several
            times its output: benchmarks/RESULTS.md, "E4 as images grow"); with it, one more
            forward pass per step. Same values and gradients. Torch under
            `jit_compile=True` and the `reference_mode()` / `portable_mode()` paths keep
            everything. On the CPU at stride 1 (torch: eager) the layer keeps only its input
            without it (the whole layer runs by bands of rows, `keras_convx.ops.e4.e4_apply`),
            and recompute changes less.
        kernel_initializer: initializer of the reduction and encoder kernels (default
            `"he_normal"`); the generator kernel always starts Glorot-uniform.
        bias_initializer: initializer of the generator bias.
        kernel_regularizer, kernel_constraint: applied to the three kernels.
        activity_regularizer: as for any layer.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape:
        a group feature map `(batch, rows, cols, fields·|G|)` (channels_last).

    Output shape:
        `(batch, ceil(rows / s), ceil(cols / s), filters·|G|)` (channels_last).

    Weights:
        `reduce_kernel` `(C_in·|G|, C_r)`, `norm_gamma` and `norm_beta` `(C_r,)` (`(C_r·|G|,)`
        with `official_compat`), `generator_kernel` `(C_r, k²·slices)`, `generator_bias`
        `(k²·slices,)`, `encoder_kernel` `(C_in·|G|, filters)`. A 1×1 group kernel's row
        `c·|G| + h` is the official `(out, in, |G|)` weight's `[:, c, h]`.

    Example:

    >>> x = np.random.rand(2, 28, 28, 16 * 4).astype("float32")
    >>> E4Conv2D(16, 5, group="p4", reduction_ratio=1, slices=2)(x).shape
    (2, 28, 28, 64)
    """

    # Public marker: the layer takes a group feature map (read by analysis.equivariance_error).
    group_input = True

    def __init__(
        self,
        filters,
        kernel_size,
        group="p4",
        reduction_ratio=2,
        slices=1,
        strides=1,
        data_format=None,
        official_compat=False,
        epsilon=1e-5,
        implementation="auto",
        recompute=False,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        kernel_constraint=None,
        activity_regularizer=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = _common.integer("filters", filters)
        self.kernel_size = _common.odd_kernel_size(kernel_size)
        self.group = gops.check_group(group)
        self.order = gops.group_order(self.group)
        ratio = _common.number("reduction_ratio", reduction_ratio, 1)
        # an int stays an int in the config (the official code's r is an int)
        self.reduction_ratio = int(ratio) if _common.is_int(reduction_ratio) else ratio
        self.slices = _common.integer("slices", slices)
        if self.filters % self.slices:
            raise ValueError(
                "Expected slices to divide filters. "
                f"Received: filters={self.filters}, slices={self.slices}"
            )
        strides = _common.integer("strides", strides[0] if isinstance(strides, (tuple, list)) and
                                  len(strides) == 2 and strides[0] == strides[1] else strides)
        if strides not in (1, 2):
            raise ValueError(f"Expected strides to be 1 or 2. Received: strides={strides}")
        self.strides = strides
        self.data_format = _common.data_format(data_format)
        self.official_compat = _common.boolean("official_compat", official_compat)
        self.epsilon = _common.number("epsilon", epsilon, 0, exclusive_minimum=True)
        self.implementation = _common.choice("implementation", implementation, gops.AGGREGATIONS)
        self.recompute = _common.boolean("recompute", recompute)
        _common.set_objects(
            self,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            kernel_constraint=kernel_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)
        # Static NumPy tables, built here (eagerly) and read as constants by `call`:
        # torch.compile ignores `functools.lru_cache` and would trace their construction.
        self._one_by_one_table = gops.kernel_tables("group", self.group, 1)
        self._kernel_maps = gops.kernel_maps(self.group, self.kernel_size)
        self._generator_columns = gops.steered_generator_columns(self.group, self.kernel_size, self.slices)
        self._encoder_columns = gops.encoder_columns(self.order, self.slices, self.filters // self.slices)


    def _kernel(self, name, shape, initializer=None):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer or self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def build(self, input_shape):
        channels = input_shape[_common.channel_axis(self.data_format)]
        if channels is None or channels % self.order:
            raise ValueError(
                f"E4Conv2D with group={self.group!r} expects a known channel count that is a "
                f"multiple of |G| = {self.order}. Received: input_shape={input_shape}"
            )
        self.in_fields = channels // self.order
        self.reduced = int(self.in_fields // self.reduction_ratio)
        if self.reduced < 1:
            raise ValueError(
                f"reduction_ratio={self.reduction_ratio} leaves no generator channels for "
                f"{self.in_fields} input fields (C_r = floor(C_in / r) must be >= 1)."
            )
        k2s = self.kernel_size**2 * self.slices
        norm_size = self.reduced * (self.order if self.official_compat else 1)
        self.reduce_kernel = self._kernel("reduce_kernel", (channels, self.reduced))
        self.norm_gamma = self.add_weight(name="norm_gamma", shape=(norm_size,), initializer="ones")
        self.norm_beta = self.add_weight(name="norm_beta", shape=(norm_size,), initializer="zeros")
        self.generator_kernel = self._kernel("generator_kernel", (self.reduced, k2s), "glorot_uniform")
        self.generator_bias = self.add_weight(
            name="generator_bias", shape=(k2s,), initializer=self.bias_initializer
        )
        self.encoder_kernel = self._kernel("encoder_kernel", (channels, self.filters))
        _common.lock_channels(self, channels, self.data_format)

    # -- pieces -------------------------------------------------------------------------------

    def _group_1x1(self, kernel, dtype):
        """The dense (C·|G|, F·|G|) matrix of a 1×1 group convolution with a `(C·|G|, F)` kernel."""
        kernel = keras.ops.reshape(keras.ops.cast(kernel, dtype), (1, 1, *kernel.shape))
        dense = gops.group_kernel(kernel, self.group, self._one_by_one_table)
        return keras.ops.reshape(dense, dense.shape[2:])

    def _steered_generator(self, dtype):
        """Generator weights `(C_r, |G|, k²·slices)` and bias `(k²·slices, |G|)` with the steering
        folded in; output slot `s·slices + σ` (window position s of slice σ)."""
        n, k2, slices = self.order, self.kernel_size**2, self.slices
        cols = self._generator_columns
        kernel = keras.ops.cast(self.generator_kernel, dtype)
        bias = keras.ops.cast(self.generator_bias, dtype)
        if self._kernel_maps is not None:  # the stack of steered kernels, (slices, S·k²) per row
            kernel = keras.ops.reshape(kernel, (self.reduced * slices, k2))
            kernel = keras.ops.transpose(gops.stack_kernels(keras.ops.transpose(kernel), self._kernel_maps))
            kernel = keras.ops.reshape(kernel, (self.reduced, -1))
            bias = gops.stack_kernels(keras.ops.transpose(keras.ops.reshape(bias, (slices, k2))), self._kernel_maps)
            bias = keras.ops.reshape(keras.ops.transpose(bias), (-1,))
        w = gops.static_take(kernel, cols.T.reshape(-1), axis=1)  # (C_r, G·k2s)
        w = keras.ops.reshape(w, (self.reduced, n, k2 * slices))
        b = keras.ops.reshape(gops.static_take(bias, cols.reshape(-1), axis=0), (k2 * slices, n))
        return w, b

    def generate_kernels(self, x):
        """Steered per-pixel kernels `(B, H', W', k², slices·|G|)` for channels_last `x`.

        Entry `[b, y, x, i·k + j, σ·|G| + g]` is `K[σ, g, (y, x)][i, j]` of the spec.
        """
        flat, block = self.generator_inputs(x)
        shape = keras.ops.shape(flat)
        return keras.ops.reshape(matmul_last(flat, block), (
            shape[0], shape[1], shape[2], self.kernel_size**2, self.slices * self.order))

    def generator_weights(self, dtype):
        """`(reduce, gamma, beta, block)`: the generator's weights as `ops.e4` takes them — the
        group 1×1 reduction (C_in·|G|, C_r·|G|), the normalisation's γ and β (C_r, 1 or |G|,
        float32) and the steered block (C_r·|G| + 1, k²·slices·|G|), its last row the bias."""
        n = self.order
        reduce = self._group_1x1(self.reduce_kernel, dtype)
        gamma = keras.ops.reshape(keras.ops.cast(self.norm_gamma, "float32"), (self.reduced, -1))
        beta = keras.ops.reshape(keras.ops.cast(self.norm_beta, "float32"), (self.reduced, -1))
        w, b = self._steered_generator(dtype)
        # The per-element products t[..., :, g] @ w[:, g, :] as ONE matrix product with a
        # block-diagonal (C_r·|G|, k²·slices·|G|) weight: |G| times the multiply-adds of the
        # batched form, but a single large GEMM whose output is already in (slot, g) order
        # (with the batched einsum the generator's training step was 1.4× slower, jax CPU; per
        # element in eager torch's bands, the products took 38 → 25 ms of three steps at 64 px
        # but putting their output in slot order cost 26 ms more). The bias rides along as one
        # more input row against a column of ones (no separate pass over the large kernel
        # tensor).
        eye = keras.ops.convert_to_tensor(np.eye(n)[None, :, None, :], dtype=w.dtype)
        block = keras.ops.reshape(w[:, :, :, None] * eye, (self.reduced * n, -1))
        block = keras.ops.concatenate([block, keras.ops.reshape(b, (1, -1))], axis=0)
        return reduce, gamma, beta, block

    def generator_inputs(self, x):
        """`(features, block)`: the kernels are `features @ block` (see `generate_kernels`);
        features `(B, H', W', C_r·|G| + 1)`, the normalised reduced map and a column of ones."""
        reduce, gamma, beta, block = self.generator_weights(x.dtype)
        return e4ops.generator_features(x, reduce, gamma, beta, self.strides, self.epsilon), block

    def call(self, inputs):
        if self.recompute:
            return recompute(self.forward_pass, inputs, self.variables)
        return self.forward_pass(inputs)

    def forward_pass(self, inputs):
        """The layer's computation (`call` runs it, through `ops.core.recompute` when the
        layer recomputes)."""
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.data_format == "channels_first":
            x = keras.ops.transpose(x, (0, 2, 3, 1))
        reduce, gamma, beta, block = self.generator_weights(x.dtype)
        encoder = gops.static_take(self._group_1x1(self.encoder_kernel, x.dtype), self._encoder_columns, axis=1)
        n, slices, m = self.order, self.slices, self.filters // self.slices
        y = e4ops.e4_apply(x, reduce, gamma, beta, block, encoder, self.kernel_size, self.strides,
                           self.epsilon, self.implementation)
        shape = keras.ops.shape(y)
        y = keras.ops.reshape(y, (shape[0], shape[1], shape[2], m, slices, n))
        y = keras.ops.transpose(y, (0, 1, 2, 4, 3, 5))
        y = keras.ops.reshape(y, (shape[0], shape[1], shape[2], self.filters * n))
        if self.data_format == "channels_first":
            y = keras.ops.transpose(y, (0, 3, 1, 2))
        return y

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = input_shape[1:3] if self.data_format == "channels_last" else input_shape[2:4]
        out = [None if n is None else -(-n // self.strides) for n in spatial]
        channels = self.filters * self.order
        if self.data_format == "channels_last":
            return (input_shape[0], *out, channels)
        return (input_shape[0], channels, *out)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "group": self.group,
                "reduction_ratio": self.reduction_ratio,
                "slices": self.slices,
                "strides": self.strides,
                "data_format": self.data_format,
                "official_compat": self.official_compat,
                "epsilon": self.epsilon,
                "implementation": self.implementation,
                "recompute": self.recompute,
            }
        )
        config.update(
            _common.serialize_objects(
                self, "kernel_initializer", "bias_initializer", "kernel_regularizer", "kernel_constraint"
            )
        )
        return config


# The parameter keys of one official E4 module (`E4_C4` / `E4_D4`), under its prefix.
OFFICIAL_KEYS = ("v.0.weight", "conv1.0.weight", "conv1.1.weight", "conv1.1.bias",
                  "conv2.0.net.weight", "conv2.0.net.bias")


def _one_by_one(weight):
    """Official 1×1 group kernel `(F, C, |G|)` → `(C·|G|, F)` (row `c·|G| + h`)."""
    return group_conv.from_official_weights(weight)[0][0, 0]


def from_official_weights(state_dict, prefix="", official_compat=True):
    """Convert one official E4-Net `E4_C4` / `E4_D4` module to `E4Conv2D.set_weights`.

    The official module (github.com/LingshenHe/Efficient-Equivariant-Network,
    `model/group_op.py`) holds the encoder `v.0` (1×1 group conv `(F, C_in, |G|)`), the
    generator's 1×1 group conv `conv1.0` `(C_r, C_in, |G|)`, its GroupNorm `conv1.1`
    (`nn.GroupNorm(C_r, C_r·|G|)`: one γ, β per orientation channel, index `c·|G| + g`)
    and the shared `nn.Conv3d` `conv2.0.net` (`(k²·S, C_r, 1, 1, 1)` and bias `(k²·S,)`,
    column `σ·k² + i·k + j`). Its `groups` argument is the number of FIELDS PER SLICE: port
    `E4_C4(C_in, F, k, r, groups=M)` to `E4Conv2D(F, k, group="p4", reduction_ratio=r,
    slices=F // M)`. Its stride-2 form (average-pooled generator input, strided unfold)
    equals `strides=2` here for even image sizes.

    Args:
        state_dict: a mapping (the official model's `state_dict()`, or the module's own)
            whose values are arrays, backend tensors or `torch.nn.Parameter`s.
        prefix: the module's key prefix in `state_dict`, e.g. `"conv2"` or
            `"conv3_x.0.residual_function.4"` (`""` for the module's own state dict).
        official_compat: the target layer's `official_compat`. True (default): the untied
            GroupNorm γ, β are copied as they are. False: they must be equal across each
            field's |G| copies (e.g. never trained), and are tied; otherwise a ValueError
            says to use `official_compat=True`.

    Returns:
        `[reduce_kernel, norm_gamma, norm_beta, generator_kernel, generator_bias,
        encoder_kernel]`.

    Example:

    ```python
    layer = E4Conv2D(16, 5, group="p4", reduction_ratio=1, slices=2, official_compat=True)
    layer.build((None, 28, 28, 16 * 4))
    layer.set_weights(from_official_weights(state_dict, prefix="conv2"))
    ```
    """
    keys = [f"{prefix}.{key}" if prefix else key for key in OFFICIAL_KEYS]
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise ValueError(f"The state dict has no {missing} (an official E4 module under "
                         f"prefix={prefix!r} has {list(OFFICIAL_KEYS)}).")
    encoder, reduce, gamma, beta, generator, generator_bias = (
        arguments.array(key, state_dict[key], ndim=rank)
        for key, rank in zip(keys, (3, 3, 1, 1, 5, 1)))
    reduced, order = reduce.shape[0], reduce.shape[2]
    if gamma.shape != (reduced * order,) or beta.shape != gamma.shape:
        raise ValueError(f"Expected {keys[2]} and {keys[3]} of shape ({reduced * order},). "
                         f"Received: {gamma.shape}, {beta.shape}")
    if not official_compat:
        per_field = [v.reshape(reduced, order) for v in (gamma, beta)]
        if any(np.any(v != v[:, :1]) for v in per_field):
            raise ValueError(
                "The official GroupNorm γ, β differ between the |G| copies of a field, which an "
                "E4Conv2D with tied affine cannot hold: build the layer with "
                "official_compat=True (and pass official_compat=True here)."
            )
        gamma, beta = (v[:, 0].copy() for v in per_field)
    generator = np.ascontiguousarray(generator.reshape(generator.shape[0], -1).T)
    return [_one_by_one(reduce), gamma, beta, generator, generator_bias, _one_by_one(encoder)]
