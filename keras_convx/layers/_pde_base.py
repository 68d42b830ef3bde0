"""What the grid and graph PDE layers share (`keras_convx.layers.pde`,
`keras_convx.layers.pde_graph`): arguments, the kernel K and its step-size bound, and the
leapfrog state pair of the hyperbolic layers."""

import keras

from keras_convx.initializers import CentredIdentity
from keras_convx.layers import _common
from keras_convx.ops import pde as pops


def step_size_argument(value):
    return _common.number("step_size", value, 0, exclusive_minimum=True)


class PDEBase(keras.layers.Layer):
    """Arguments, the kernel K and the step-size bound shared by the PDE layers."""

    _kernel_rank = 4
    _theorem = "diffusion"

    def __init__(
        self,
        filters=None,
        step_size=0.1,
        activation="tanh",
        stable=False,
        kernel_initializer=None,
        kernel_regularizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = None if filters is None else _common.integer("filters", filters)
        self.step_size = step_size_argument(step_size)
        self.stable = _common.boolean("stable", stable)
        self.activation = keras.activations.get(activation)
        if self.stable:
            reason = pops.activation_violation(self.activation)
            if reason is not None:
                raise ValueError(
                    "With stable=True the activation must be monotonically non-decreasing and "
                    "sign-preserving with |σ(x)| ≤ |x| (e.g. 'relu', 'tanh', 'linear', "
                    f"'leaky_relu', 'elu'), which the norm-decay theorem needs; {reason}. "
                    f"Received: activation={activation!r}"
                )
        _common.set_objects(
            self,
            kernel_initializer=kernel_initializer or CentredIdentity(),
            kernel_regularizer=kernel_regularizer,
            kernel_constraint=kernel_constraint,
        )

    def _build_kernel(self, channels, spatial=()):
        if channels is None:
            raise ValueError(
                f"The channel dimension of the inputs to {type(self).__name__} must be known."
            )
        self.channels = int(channels)
        filters = self.filters or self.channels
        self.kernel = _common.add_conv_weight(self, "kernel", (*spatial, self.channels, filters))

    def lambda_bound(self, gradient_bound=pops.GRID_GRADIENT_NORM_SQUARED):
        """An upper bound of λ_max(AᵀA) = ‖K G‖² for the current kernel: ‖G‖²·‖K‖²."""
        kappa = pops.kernel_norm_bound(keras.ops.cast(self.kernel, "float32"))
        return gradient_bound * keras.ops.square(kappa)

    def effective_step_size(self, gradient_bound=pops.GRID_GRADIENT_NORM_SQUARED):
        """The step h the layer uses: `step_size`, capped by the stability bound if `stable`."""
        if not self.stable:
            return keras.ops.convert_to_tensor(self.step_size, "float32")
        lam = self.lambda_bound(gradient_bound)
        if self._theorem == "diffusion":
            return pops.stable_diffusion_step(self.step_size, lam)
        h = pops.stable_wave_step(self.step_size, lam)
        if getattr(self, "diffusion_blend", False):
            h = keras.ops.minimum(h, pops.stable_diffusion_step(self.step_size, lam))
        return h

    def _blend_weight(self):
        if getattr(self, "diffusion_blend", False):
            self.blend_logit = self.add_weight(name="blend_logit", shape=(), initializer="zeros")

    def _leapfrog(self, f, f_prev, flux, h):
        """The hyperbolic update (or the learned diffusion/wave blend) from f, f_prev, flux."""
        if not getattr(self, "diffusion_blend", False):
            return 2.0 * f - f_prev - keras.ops.square(h) * flux
        beta = keras.ops.sigmoid(keras.ops.cast(self.blend_logit, f.dtype))
        alpha = 1.0 - beta
        h2 = keras.ops.square(h)
        num = (2.0 * beta / h2) * f - (beta / h2) * f_prev + (alpha / h) * f - flux
        return num / (beta / h2 + alpha / h)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "step_size": self.step_size,
                "activation": keras.activations.serialize(self.activation),
                "stable": self.stable,
                **_common.serialize_objects(
                    self, "kernel_initializer", "kernel_regularizer", "kernel_constraint"
                ),
            }
        )
        return config


class WaveState:
    """`return_state` / `diffusion_blend` arguments and outputs of the hyperbolic layers."""

    _theorem = "wave"

    def _init_wave(self, return_state, diffusion_blend):
        self.return_state = _common.boolean("return_state", return_state)
        self.diffusion_blend = _common.boolean("diffusion_blend", diffusion_blend)

    def _outputs(self, f_next, f):
        return [f_next, f] if self.return_state else f_next

    def _output_shape(self, shape):
        return [shape, shape] if self.return_state else shape

    def get_config(self):
        config = super().get_config()
        config.update({"return_state": self.return_state,
                       "diffusion_blend": self.diffusion_blend})
        return config


def split_state(inputs, name):
    """`f` or `[f, f_prev]` → (f, f_prev or None), with the shapes checked to match."""
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 2:
            raise ValueError(
                f"{name} takes a tensor f or the state pair [f, f_prev]. "
                f"Received {len(inputs)} tensors."
            )
        f, f_prev = inputs
        if tuple(f.shape) != tuple(f_prev.shape):
            raise ValueError(
                f"{name}: the state pair [f, f_prev] must have matching shapes. "
                f"Received: f.shape={tuple(f.shape)}, f_prev.shape={tuple(f_prev.shape)}"
            )
        return f, f_prev
    return inputs, None


def state_shape(input_shape, name):
    """Shape of f from an input shape that is f's or the pair's."""
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
        input_shape[0], (list, tuple)
    ):
        if len(input_shape) != 2:
            raise ValueError(f"{name} takes f or the state pair [f, f_prev]. "
                             f"Received input shapes {input_shape}")
        a, b = (tuple(s) for s in input_shape)
        if len(a) != len(b) or any(x is not None and y is not None and x != y
                                   for x, y in zip(a, b)):
            raise ValueError(
                f"{name}: the state pair [f, f_prev] must have matching shapes. "
                f"Received: {a} and {b}"
            )
        return a
    return tuple(input_shape)
