"""PDE layers: diffusive and hyperbolic (wave) steps on image grids and on graphs.

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
import numpy as np

from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.ops import dispatcher
from keras_convx.ops import pde as pops


@register
class CentredIdentity(keras.initializers.Initializer):
    """Identity operator as a kernel: `eye(C, F)` at the centre tap, zeros elsewhere.

    For a `(C, F)` matrix it is `gain·eye(C, F)`; for a `(k, k, C, F)` convolution kernel the
    centre tap holds `gain·eye(C, F)`, so the convolution starts as the identity (or its
    rectangular truncation). The PDE layers start from K = I.

    Example:

    >>> w = CentredIdentity()((3, 3, 2, 2))
    >>> [float(v) for v in keras.ops.convert_to_numpy(w)[1, 1].ravel()]
    [1.0, 0.0, 0.0, 1.0]
    """

    def __init__(self, gain=1.0):
        self.gain = _common.number("gain", gain)

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) not in (2, 4) or (len(shape) == 4 and shape[0] != shape[1]):
            raise ValueError(
                "CentredIdentity expects a (C, F) or (k, k, C, F) shape. "
                f"Received: shape={shape}"
            )
        w = np.zeros(shape, dtype="float32")
        eye = self.gain * np.eye(shape[-2], shape[-1], dtype="float32")
        if len(shape) == 2:
            w[...] = eye
        else:
            w[shape[0] // 2, shape[1] // 2] = eye
        return keras.ops.convert_to_tensor(w, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {"gain": self.gain}


def _step_size(value):
    return _common.number("step_size", value, 0, exclusive_minimum=True)


class _PDEBase(keras.layers.Layer):
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
        self.step_size = _step_size(step_size)
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


class _WaveState:
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


def _split_state(inputs, name):
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


def _state_shape(input_shape, name):
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


class _GridPDE(_PDEBase):
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
class HyperbolicConv2D(_WaveState, _GridPDE):
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
        self._build_grid(_state_shape(input_shape, type(self).__name__))
        self._blend_weight()

    def call(self, inputs):
        f, f_prev = _split_state(inputs, type(self).__name__)
        self._check(f, *([] if f_prev is None else [f_prev]))
        f = keras.ops.cast(f, self.compute_dtype)
        f_prev = f if f_prev is None else keras.ops.cast(f_prev, self.compute_dtype)
        h = keras.ops.cast(self.effective_step_size(), self.compute_dtype)
        return self._outputs(self._leapfrog(f, f_prev, self._flux(f), h), f)

    def compute_output_shape(self, input_shape):
        shape = _state_shape(input_shape, type(self).__name__)
        if self.built:
            self._check(shape)
        return self._output_shape(shape)


# ------------------------------------------------------------------------------------ graphs


def _graph_inputs(inputs, name):
    """[x, edge_index] or [x, edge_index, edge_weight] → [x, edge_index, edge_weight or None]."""
    if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
        raise ValueError(
            f"{name} takes [x, edge_index] or [x, edge_index, edge_weight]. "
            f"Received: {type(inputs).__name__} of {len(inputs) if isinstance(inputs, (list, tuple)) else 1}"
        )
    return list(inputs) + [None] * (3 - len(inputs))


def _check_graph_shapes(x_shape, e_shape, w_shape, name):
    x_shape, e_shape = tuple(x_shape), tuple(e_shape)
    if len(x_shape) not in (2, 3):
        raise ValueError(f"{name}: x must be (N, C) or (B, N, C). Received: x.shape={x_shape}")
    if len(e_shape) != len(x_shape) or e_shape[-2] not in (2, None):
        raise ValueError(
            f"{name}: edge_index must be (2, E) for x of shape (N, C) or (B, 2, E) for "
            f"(B, N, C). Received: x.shape={x_shape}, edge_index.shape={e_shape}"
        )
    if w_shape is not None and (tuple(w_shape)[-1] != e_shape[-1] or
                                len(tuple(w_shape)) != len(e_shape) - 1):
        raise ValueError(
            f"{name}: edge_weight must have shape {e_shape[:-2] + e_shape[-1:]} to match "
            f"edge_index {e_shape}. Received: edge_weight.shape={tuple(w_shape)}"
        )
    if x_shape[-1] is None or x_shape[-2] is None:
        raise ValueError(f"{name}: the node and channel dimensions of x must be known. "
                         f"Received: x.shape={x_shape}")


class _GraphPDE(_PDEBase):
    def _build_graph(self, input_shape):
        name = type(self).__name__
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) not in (2, 3)
                or not isinstance(input_shape[0], (list, tuple))):
            raise ValueError(f"{name} takes [x, edge_index] or [x, edge_index, edge_weight]. "
                             f"Received input shape(s) {input_shape}")
        x_shape = input_shape[0]
        self._pair = isinstance(x_shape, (list, tuple)) and isinstance(x_shape[0], (list, tuple))
        if self._pair:
            x_shape = _state_shape(x_shape, name)
        w_shape = input_shape[2] if len(input_shape) == 3 else None
        _check_graph_shapes(x_shape, input_shape[1], w_shape, name)
        self._build_kernel(x_shape[-1])
        return x_shape

    def _flux(self, x, edge_index, edge_weight):
        """(flux, h) for batched x (B, N, C): h is (B, 1, 1) when `stable` (per graph)."""
        kernel = keras.ops.cast(self.kernel, self.compute_dtype)
        flux = pops.graph_flux(x, edge_index, edge_weight, kernel, self.activation)
        if self.stable:
            bound = pops.graph_gradient_norm_bound(
                edge_index, keras.ops.cast(edge_weight, "float32"), x.shape[1])
            h = self.effective_step_size(keras.ops.reshape(bound, (-1, 1, 1)))
        else:
            h = self.effective_step_size()
        return flux, keras.ops.cast(h, self.compute_dtype)

    def _check(self, x, edge_index):
        """Channels, the index dtype and, where the values are known now, the index range:
        refused with a clear error before any work (inside traced steps the op masks
        out-of-range edges instead, see `keras_convx.ops.pde.graph_gradient`)."""
        _common.check_input(self, x.shape, (2, 3), -1, self.channels, what="node features x")
        dtype = keras.backend.standardize_dtype(edge_index.dtype)
        if "int" not in dtype:
            raise TypeError(
                f"Layer {self.name!r} ({type(self).__name__}) expects an integer edge_index "
                f"(node numbers). Received: edge_index.dtype={dtype}. In a functional model use "
                "keras.Input(..., dtype='int32').")
        value = dispatcher.concrete_value(edge_index)
        if value is not None:
            nodes = x.shape[-2]
            bad = pops.invalid_edges(value if value.ndim == 3 else value[None], nodes)
            if bad:
                raise ValueError(
                    f"Layer {self.name!r} ({type(self).__name__}): edge_index must hold node "
                    f"numbers in [0, {nodes}) for x with {nodes} nodes; {len(bad)} edge(s) do "
                    f"not, first (graph, edge) positions {bad[:5]}.")

    @staticmethod
    def _batch(x, edge_index, edge_weight, dtype):
        batched = len(x.shape) == 3
        if edge_weight is None:
            edge_weight = keras.ops.ones(keras.ops.shape(edge_index[..., 0, :]), dtype=dtype)
        edge_weight = keras.ops.cast(edge_weight, dtype)
        if not batched:
            x = keras.ops.expand_dims(x, 0)
            edge_index = keras.ops.expand_dims(edge_index, 0)
            edge_weight = keras.ops.expand_dims(edge_weight, 0)
        return x, edge_index, edge_weight, batched


_GRAPH_ARGS = """
    Args:
        filters: int or None, channels of the edge features K G x (K is a (C, filters)
            channel mixing). Default None: C. The output has the input's channels.
        step_size: float > 0, the time step h.
        activation: σ, default "tanh" (monotone and sign-preserving when `stable=True`).
        stable: bool. If True the step is capped per graph by a rigorous bound of
            λ_max(AᵀA): ‖K‖² (Schur/Frobenius) times 2·max_i Σ_{e∋i} w_e².
        kernel_initializer: default `CentredIdentity()`; kernel_regularizer,
            kernel_constraint: as in `Dense`.

    Inputs: `[x, edge_index]` or `[x, edge_index, edge_weight]`: x `(B, N, C)` node features,
    edge_index `(B, 2, E)` integer (i, j) node indices per edge, edge_weight `(B, E)` (default
    ones; zero-weight edges are padding, so graphs with different edge counts can be batched).
    Unbatched `(N, C)`, `(2, E)`, `(E,)` are accepted too. (G x)_e = w_e (x_i − x_j).

    Graphs never mix: the indices of each sample refer to its own N nodes. A float
    edge_index is refused (TypeError); indices outside [0, N) are refused with a ValueError
    where their values are known (eager calls), and inside traced or compiled steps such an
    edge is masked out in the op (it contributes nothing, to any graph).
"""


@register
class GraphDiffusion(_GraphPDE):
    __doc__ = (
        """Diffusive PDE-GCN layer on a graph: `x ← x − h·Gᵀ Kᵀ σ(K G x)`.

    The graph form of `DiffusionConv2D` (on the 4-neighbour grid graph with unit weights and
    a channel-mixing K the two are the same operator). The norm of x never grows when σ is
    monotone and sign-preserving and h ≤ 2/λ_max(AᵀA).
"""
        + _GRAPH_ARGS
        + """
    Output: x's shape.

    Example:

    >>> x = keras.random.normal((5, 4))                    # 5 nodes, 4 channels
    >>> edges = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])     # a path graph
    >>> tuple(GraphDiffusion(stable=True)([x, edges]).shape)
    (5, 4)

    Reference: Eliasof, Haber, Treister, "PDE-GCN", NeurIPS 2021.
    """
    )

    def build(self, input_shape):
        self._build_graph(input_shape)
        if self._pair:
            raise ValueError("GraphDiffusion takes x, not a state pair [x, x_prev].")

    def call(self, inputs):
        x, edge_index, edge_weight = _graph_inputs(inputs, type(self).__name__)
        self._check(x, edge_index)
        x = keras.ops.cast(x, self.compute_dtype)
        x, edge_index, edge_weight, batched = self._batch(x, edge_index, edge_weight,
                                                          self.compute_dtype)
        flux, h = self._flux(x, edge_index, edge_weight)
        y = x - h * flux
        return y if batched else y[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


@register
class GraphHyperbolic(_WaveState, _GraphPDE):
    __doc__ = (
        """Hyperbolic PDE-GCN layer on a graph (leapfrog):
    `x_{l+1} = 2 x_l − x_{l−1} − h²·Gᵀ Kᵀ σ(K G x_l)`.

    The graph form of `HyperbolicConv2D`. The first input is x (then x_{l−1} = x_l) or the
    state pair `[x_l, x_{l−1}]`; with `return_state=True` the layer returns
    `[x_{l+1}, x_l]` for the next layer, else `x_{l+1}`.
"""
        + _GRAPH_ARGS
        + """        return_state: bool, return the state pair (default False).
        diffusion_blend: bool, the learned diffusion/wave blend (see `HyperbolicConv2D`).

    Example:

    >>> x = keras.random.normal((5, 4))
    >>> edges = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    >>> state = GraphHyperbolic(return_state=True)([x, edges])
    >>> tuple(GraphHyperbolic()([state, edges]).shape)
    (5, 4)

    Reference: Eliasof, Haber, Treister, "PDE-GCN", NeurIPS 2021.
    """
    )

    def __init__(self, filters=None, step_size=0.1, activation="tanh", stable=False,
                 return_state=False, diffusion_blend=False, **kwargs):
        super().__init__(filters=filters, step_size=step_size, activation=activation,
                         stable=stable, **kwargs)
        self._init_wave(return_state, diffusion_blend)

    def build(self, input_shape):
        self._build_graph(input_shape)
        self._blend_weight()

    def call(self, inputs):
        x_or_pair, edge_index, edge_weight = _graph_inputs(inputs, type(self).__name__)
        x, x_prev = _split_state(x_or_pair, type(self).__name__)
        self._check(x, edge_index)
        x = keras.ops.cast(x, self.compute_dtype)
        x_prev = x if x_prev is None else keras.ops.cast(x_prev, self.compute_dtype)
        batched = len(x.shape) == 3
        x, edge_index, edge_weight, _ = self._batch(x, edge_index, edge_weight,
                                                    self.compute_dtype)
        if not batched:
            x_prev = keras.ops.expand_dims(x_prev, 0)
        flux, h = self._flux(x, edge_index, edge_weight)
        x_next = self._leapfrog(x, x_prev, flux, h)
        if not batched:
            x_next, x = x_next[0], x[0]
        return self._outputs(x_next, x)

    def compute_output_shape(self, input_shape):
        return self._output_shape(_state_shape(input_shape[0], type(self).__name__))
