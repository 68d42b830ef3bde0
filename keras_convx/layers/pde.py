"""PDE layers on image grids: diffusive and hyperbolic (wave) steps (the graph layers are in
`keras_convx.layers.pde_graph`).

One layer is one explicit time step of a PDE whose spatial operator is `Aᵀ σ(A f)` with
`A = K G`: G the gradient (pixel → edge differences, Neumann boundary by construction), K a
learned channel mixing or k×k convolution, Aᵀ = Gᵀ Kᵀ its exact adjoint with the SAME weights
(see `keras_convx.ops.pde`).

- `DiffusionConv2D` / `GraphDiffusion`: `f ← f − h·Gᵀ Kᵀ σ(K G f)`. For σ monotone and
  sign-preserving (ReLU, tanh, identity) and `h ≤ 2/λ_max(AᵀA)` the norm of f never grows;
  `stable=True` enforces that step bound for any learned K.
- `HyperbolicConv2D` / `GraphHyperbolic`: the leapfrog `f_{l+1} = 2 f_l − f_{l−1} −
  h²·Gᵀ Kᵀ σ(K G f_l)`; with σ = identity and a shared K it conserves a discrete energy.

Reference: M. Eliasof, E. Haber, E. Treister, "PDE-GCN: Novel Architectures for Graph Neural
Networks Motivated by Partial Differential Equations", NeurIPS 2021; L. Ruthotto, E. Haber,
"Deep Neural Networks Motivated by Partial Differential Equations", JMIV 2019.
"""


import keras

from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._pde_base import PDEBase
from keras_convx.layers._pde_base import WaveState
from keras_convx.layers._pde_base import split_state
from keras_convx.layers._pde_base import state_shape
from keras_convx.ops import pde as pops


class _GridPDE(PDEBase):
    def __init__(self, filters=None, kernel_size=1, step_size=0.1, activation="tanh",
                 stable=False, data_format=None, **kwargs):
        super().__init__(filters=filters, step_size=step_size, activation=activation,
                         stable=stable, **kwargs)
        self.kernel_size = _common.odd_kernel_size(kernel_size)
        self.data_format = _common.data_format(data_format)


    def _build_grid(self, shape):
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} expects 4-D inputs. Received: {shape}")
        k = self.kernel_size
        self._build_kernel(shape[_common.channel_axis(self.data_format)], (k, k))

    def _check(self, *fields):
        """Rank and channels of f (and f_prev) against what the layer was built for (in
        `call` and, for symbolic inputs, in `compute_output_shape`)."""
        for f in fields:
            shape = getattr(f, "shape", f)
            _common.check_input(self, shape, 4, _common.channel_axis(self.data_format),
                                self.channels)

    def _flux(self, f):
        kernel = keras.ops.cast(self.kernel, self.compute_dtype)
        return pops.grid_flux(f, kernel, self.activation, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "data_format": self.data_format})
        return config


_GRID_ARGS = """
    Args:
        filters: int or None, channels of the edge features K G f (K maps C → filters).
            Default None: the input's channel count. The output always has the input's
            channels.
        kernel_size: odd int, size of K. 1 (default) is PDE-GCN's channel mixing on each
            edge; 3 is the grid form of Ruthotto & Haber (its adjoint is the transposed
            convolution with the same kernel).
        step_size: float > 0, the time step h.
        activation: σ, any Keras activation; default "tanh". With `stable=True` it must be
            monotone and sign-preserving with |σ(x)| ≤ |x| (checked; ReLU, tanh, identity).
        stable: bool. If True, the step actually used is capped by a rigorous upper bound of
            λ_max(AᵀA) computed from the current kernel (‖G‖² ≤ 8 times a Schur/Frobenius
            bound of ‖K‖²), so the theorem holds for ANY learned K, during and after
            training. `effective_step_size()` returns the step in use.
        data_format: "channels_last" or "channels_first"; default
            `keras.config.image_data_format()`.
        kernel_initializer: default `CentredIdentity()` (K = I, the paper's initialisation).
        kernel_regularizer, kernel_constraint: as in `Conv2D`.
"""


@register
class DiffusionConv2D(_GridPDE):
    __doc__ = (
        """Diffusive PDE step on an image grid: `f ← f − h·Gᵀ Kᵀ σ(K G f)`.

    G is the pixel gradient (x- and y-neighbour differences; the image border is a zero-flux
    Neumann boundary because edges only join existing pixels), K a learned k×k convolution
    (a channel mixing for k = 1) applied to both edge fields, and Gᵀ Kᵀ the exact adjoint with
    the same kernel. For σ monotone and sign-preserving and `h ≤ 2/λ_max(AᵀA)` (A = K G):
    `‖f_{l+1}‖² ≤ ‖f_l‖² − (2h − h²‖A‖²)‖σ(A f_l)‖²`, so the norm never grows — a stack of
    any depth is stable. `stable=True` enforces the step bound for any learned K.
"""
        + _GRID_ARGS
        + """
    Input shape: 4-D `(B, H, W, C)` (channels_last) or `(B, C, H, W)`.
    Output shape: the input's.

    Example:

    >>> x = keras.random.normal((2, 16, 16, 8))
    >>> layer = DiffusionConv2D(kernel_size=3, step_size=0.2, stable=True)
    >>> tuple(layer(x).shape)
    (2, 16, 16, 8)

    Reference: Eliasof, Haber, Treister, "PDE-GCN", NeurIPS 2021 (diffusive PDE-GCN_D).
    """
    )

    def build(self, input_shape):
        self._build_grid(tuple(input_shape))

    def call(self, inputs):
        self._check(inputs)
        f = keras.ops.cast(inputs, self.compute_dtype)
        h = keras.ops.cast(self.effective_step_size(), self.compute_dtype)
        return f - h * self._flux(f)

    def compute_output_shape(self, input_shape):
        if self.built:
            self._check(tuple(input_shape))
        return tuple(input_shape)


@register
class HyperbolicConv2D(WaveState, _GridPDE):
    __doc__ = (
        """Hyperbolic (wave) PDE step on an image grid, the leapfrog
    `f_{l+1} = 2 f_l − f_{l−1} − h²·Gᵀ Kᵀ σ(K G f_l)`.

    The layer needs the state pair (f_l, f_{l−1}). It takes either a tensor f (then
    f_{l−1} = f_l: zero initial velocity, the first layer of a stack) or the list
    `[f_l, f_{l−1}]`, and returns `[f_{l+1}, f_l]` when `return_state=True` (feed it to the next
    HyperbolicConv2D) or just `f_{l+1}`. The state is plain tensors in a list, so stacks work
    in functional models and `.keras` files like any multi-output layer. With σ = identity
    and one K shared by every step, the discrete energy
    `‖(f_{l+1} − f_l)/h‖² + ⟨f_{l+1}, AᵀA f_l⟩` is conserved (positive while h²λ_max < 4).
"""
        + _GRID_ARGS
        + """        With `stable=True` here the cap is the CFL bound h ≤ 0.99·2/√λ (h²λ_max < 4).
        return_state: bool, return `[f_{l+1}, f_l]` (True) or `f_{l+1}` (False, default).
        diffusion_blend: bool, the mixed diffusion/wave form: a learned scalar `a` (init 0),
            β = sigmoid(a), α = 1 − β, and
            `f_{l+1} = [(2β/h²) f_l − (β/h²) f_{l−1} + (α/h) f_l − flux] / (β/h² + α/h)`
            (β = 1: leapfrog, β = 0: diffusion).

    Input shape: `f` or `[f, f_prev]`, each 4-D `(B, H, W, C)` / `(B, C, H, W)`, equal shapes.
    Output shape: `f`'s; a list of two such when `return_state=True`.

    Example:

    >>> x = keras.Input((16, 16, 8))
    >>> state = HyperbolicConv2D(return_state=True)(x)          # [f_1, f_0]
    >>> state = HyperbolicConv2D(return_state=True)(state)      # [f_2, f_1]
    >>> y = HyperbolicConv2D()(state)                           # f_3
    >>> model = keras.Model(x, y)

    Reference: Eliasof, Haber, Treister, "PDE-GCN", NeurIPS 2021 (hyperbolic PDE-GCN_H).
    """
    )

    def __init__(self, filters=None, kernel_size=1, step_size=0.1, activation="tanh",
                 stable=False, data_format=None, return_state=False, diffusion_blend=False,
                 **kwargs):
        super().__init__(filters=filters, kernel_size=kernel_size, step_size=step_size,
                         activation=activation, stable=stable, data_format=data_format, **kwargs)
        self._init_wave(return_state, diffusion_blend)

    def build(self, input_shape):
        self._build_grid(state_shape(input_shape, type(self).__name__))
        self._blend_weight()

    def call(self, inputs):
        f, f_prev = split_state(inputs, type(self).__name__)
        self._check(f, *([] if f_prev is None else [f_prev]))
        f = keras.ops.cast(f, self.compute_dtype)
        f_prev = f if f_prev is None else keras.ops.cast(f_prev, self.compute_dtype)
        h = keras.ops.cast(self.effective_step_size(), self.compute_dtype)
        return self._outputs(self._leapfrog(f, f_prev, self._flux(f), h), f)

    def compute_output_shape(self, input_shape):
        shape = state_shape(input_shape, type(self).__name__)
        if self.built:
            self._check(shape)
        return self._output_shape(shape)


# Moved (kept importable from here): the graph layers to `layers.pde_graph`, the initializer
# to `keras_convx.initializers`.
from keras_convx.initializers import CentredIdentity  # noqa: E402,F401
from keras_convx.layers.pde_graph import GraphDiffusion  # noqa: E402,F401
from keras_convx.layers.pde_graph import GraphHyperbolic  # noqa: E402,F401
