"""PDE layers on graphs: `GraphDiffusion` and `GraphHyperbolic`, the graph forms of
`keras_convx.layers.pde`'s grid layers (same steps, G the graph's edge differences)."""

import keras
import numpy as np

from keras_convx._registry import register
from keras_convx.layers import _common
from keras_convx.layers._pde_base import PDEBase
from keras_convx.layers._pde_base import WaveState
from keras_convx.layers._pde_base import split_state
from keras_convx.layers._pde_base import state_shape
from keras_convx.ops import dispatcher
from keras_convx.ops import pde as pops


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


class _GraphPDE(PDEBase):
    def _build_graph(self, input_shape):
        name = type(self).__name__
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) not in (2, 3)
                or not isinstance(input_shape[0], (list, tuple))):
            raise ValueError(f"{name} takes [x, edge_index] or [x, edge_index, edge_weight]. "
                             f"Received input shape(s) {input_shape}")
        x_shape = input_shape[0]
        self._pair = isinstance(x_shape, (list, tuple)) and isinstance(x_shape[0], (list, tuple))
        if self._pair:
            x_shape = state_shape(x_shape, name)
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
class GraphHyperbolic(WaveState, _GraphPDE):
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
        x, x_prev = split_state(x_or_pair, type(self).__name__)
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
        return self._output_shape(state_shape(input_shape[0], type(self).__name__))
