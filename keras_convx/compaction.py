"""Physical removal for pruned models: `strip` (every `SynapticConv2D` → a plain `Conv2D`
with identical outputs), `compact` (the channels whose connections are all pruned removed,
with the matching batch-norm and next-layer slices: a smaller, faster model with identical
outputs) and `count_params_and_macs`. `keras_convx.pruning` re-exports all three.
"""

import keras
import numpy as np
from keras import ops

from keras_convx import folding
from keras_convx import graph
from keras_convx.layers.synaptic import SynapticConv2D
from keras_convx.prunable import PrunableMixin
from keras_convx.ops.core import to_numpy

__all__ = ["compact", "count_params_and_macs", "strip"]


def _strip_replace(layer):
    """`graph.rewrite`'s replacement of a SynapticConv2D by the equivalent plain Conv2D (the
    fold protocol), of a prunable twin by its own class without masks (None otherwise)."""
    if isinstance(layer, SynapticConv2D):
        return folding.fold_layer(layer)
    if isinstance(layer, PrunableMixin):
        config = {k: v for k, v in layer.get_config().items()
                  if k not in ("granularity", "round_to")}
        values = [to_numpy(v) for v in layer.unmasked_weights()]
        return layer.pruned_class.from_config(config), lambda n: n.set_weights(values)
    return None


def strip(model):
    """An equivalent model with no pruning state: every `SynapticConv2D` becomes a plain
    `keras.layers.Conv2D` with the effective kernel m·s·V/‖V‖ (pruned slices exactly zero)
    and the same bias, every layer of `make_prunable` its own class again (`Dense`,
    `Conv2D`, ..., pruned weights exactly zero): identical outputs. Other layers are copied
    with their weights.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> prunable = keras_convx.pruning.make_prunable(model, granularity="weight")
    >>> keras_convx.pruning.update_masks(prunable, 0.5)["total"]
    0.5
    >>> deployable = keras_convx.pruning.strip(prunable)
    >>> [type(layer).__name__ for layer in deployable.layers]   # plain Keras layers only
    ['Conv2D', 'GlobalAveragePooling2D', 'Dense']
    """
    return graph.rewrite(model, _strip_replace)


# ---------------------------------------------------------------------------------------------
# compact: physical removal of dead channels
# ---------------------------------------------------------------------------------------------

_PASS_THROUGH = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
    keras.layers.GaussianDropout, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D, keras.layers.Identity,
)
_TIED = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum,
         keras.layers.Minimum, keras.layers.Average)


def _is_conv(layer):
    return isinstance(layer, SynapticConv2D) or (
        type(layer) is keras.layers.Conv2D and layer.groups == 1
        and not getattr(layer, "lora_enabled", False)
        and not getattr(layer, "quantization_mode", None)
    )


def _kernel_bias(layer):
    """(kernel, bias or None) of a conv or Dense layer as float64 NumPy arrays."""
    kernel = to_numpy(layer.kernel).astype(np.float64)
    bias = None if layer.bias is None else to_numpy(layer.bias).astype(np.float64)
    return kernel, bias


class _Analysis:
    """Channel liveness over a Functional graph (see `compact`)."""

    def __init__(self, model):
        functional = graph.graph_of(model)
        self.nodes = graph.layer_nodes(functional)
        counts = {}
        for node in self.nodes:
            counts[id(node.operation)] = counts.get(id(node.operation), 0) + 1
        self.shared = {k for k, v in counts.items() if v > 1}
        self.channel_axis = None
        self.tensors = {}
        for node in self.nodes:
            for t in list(node.input_tensors) + list(node.outputs):
                self.tensors[id(t)] = t
        for t in functional.inputs:
            self.tensors[id(t)] = t
        self.outputs = [id(t) for t in functional.outputs]
        self.inputs = [id(t) for t in functional.inputs]
        self.kind = {id(n): self._kind(n) for n in self.nodes}
        self.kernels = {
            id(node.operation): _kernel_bias(node.operation)
            for node in self.nodes
            if self.kind[id(node)] in ("conv", "dense")
        }

    def _axis_ok(self, data_format):
        """Whether a 4-D layer's `data_format` agrees with the graph's channel axis (the first
        4-D layer met fixes it)."""
        axis = -1 if data_format == "channels_last" else 1
        if self.channel_axis is None:
            self.channel_axis = axis
        return axis == self.channel_axis

    def _kind(self, node):
        layer = node.operation
        ins, outs = node.input_tensors, node.outputs
        if id(layer) in self.shared or len(outs) != 1:
            return "opaque"
        ndim = len(outs[0].shape)
        if _is_conv(layer) and len(ins) == 1 and self._axis_ok(layer.data_format):
            return "conv"
        if type(layer) is keras.layers.Dense and len(ins) == 1 and len(ins[0].shape) == 2:
            return "dense"
        if isinstance(layer, keras.layers.BatchNormalization) and len(ins) == 1:
            axis = layer.axis if isinstance(layer.axis, int) else None
            if ndim == 2 and axis in (-1, 1):
                return "pass"
            if ndim == 4 and axis in (-1, 3, 1):
                fmt = "channels_first" if axis == 1 else "channels_last"
                if self._axis_ok(fmt):
                    return "pass"
            return "opaque"
        if isinstance(layer, _PASS_THROUGH) and len(ins) == 1:
            fmt = getattr(layer, "data_format", None)  # element-wise layers: any axis
            if len(ins[0].shape) == 4 and fmt is not None and not self._axis_ok(fmt):
                return "opaque"
            return "pass"
        if isinstance(layer, _TIED) and len(set(tuple(t.shape) for t in ins)) == 1:
            return "tied"
        if isinstance(layer, keras.layers.Concatenate) and ndim in (2, 4):
            axis = layer.axis % ndim
            expected = ndim - 1 if ndim == 2 or self.channel_axis in (None, -1) else 1
            if axis == expected:
                return "concat"
        return "opaque"

    def channels(self, tid):
        t = self.tensors[tid]
        axis = -1 if len(t.shape) == 2 or self.channel_axis in (None, -1) else 1
        return int(t.shape[axis])

    # -- forward: channels that are constant over space and batch -------------------------

    def constants(self):
        const = {}
        for tid in self.tensors:
            const[tid] = np.full(self.channels(tid), np.nan)
        for node in self.nodes:
            kind = self.kind[id(node)]
            layer = node.operation
            out = id(node.outputs[0])
            ins = [id(t) for t in node.input_tensors]
            if kind in ("conv", "dense"):
                kernel, bias = self.kernels[id(layer)]
                dead = np.all(kernel == 0, axis=tuple(range(kernel.ndim - 1)))
                values = np.zeros(kernel.shape[-1]) if bias is None else bias.copy()
                values = self._activate(layer, values)
                const[out] = np.where(dead, values, np.nan)
            elif kind == "pass":
                const[out] = self._through(layer, const[ins[0]], node)
            elif kind == "tied" and isinstance(layer, keras.layers.Add):
                const[out] = np.sum([const[i] for i in ins], axis=0)
            elif kind == "concat":
                const[out] = np.concatenate([const[i] for i in ins])
        return const

    @staticmethod
    def _dtype(layer):
        """The NumPy dtype constants go through `layer` in: float64 for a float64 layer."""
        return np.float64 if layer.compute_dtype == "float64" else np.float32

    @classmethod
    def _activate(cls, layer, values):
        if layer.activation is None:
            return values
        x = ops.convert_to_tensor(values.astype(cls._dtype(layer)))
        return to_numpy(layer.activation(x)).astype(np.float64)

    def _through(self, layer, values, node):
        """A pass-through layer applied to per-channel constants (NaN: not constant)."""
        finite = np.isfinite(values)
        if not finite.any():
            return values
        t = node.input_tensors[0]
        dtype = self._dtype(layer)
        fill = np.where(finite, values, 0.0).astype(dtype)
        if len(t.shape) == 4:
            shape = [1, 1, 1, 1]
            shape[self.channel_axis] = fill.size
            spatial = [d or 6 for d in (t.shape[1:3] if self.channel_axis == -1 else t.shape[2:4])]
            x = np.ones((1, *spatial, 1) if self.channel_axis == -1 else (1, 1, *spatial),
                        dtype) * fill.reshape(shape)
        else:
            x = fill[None]
        y = to_numpy(layer(ops.convert_to_tensor(x), training=False)
                if graph.accepts_training(layer) else layer(ops.convert_to_tensor(x)))
        y = y.astype(np.float64)
        if y.ndim == 4:
            axes = (0, 1, 2) if self.channel_axis == -1 else (0, 2, 3)
            lo, hi = y.min(axis=axes), y.max(axis=axes)
            spatially_constant = np.abs(hi - lo) <= 1e-6 * (1 + np.abs(hi))
            out = np.where(spatially_constant, hi, np.nan)
        else:
            out = y[0]
        return np.where(finite, out, np.nan)

    # -- backward: channels somebody needs -------------------------------------------------

    def needed(self, const):
        need = {tid: np.zeros(self.channels(tid), bool) for tid in self.tensors}
        for tid in self.outputs + self.inputs:
            need[tid][:] = True  # model inputs and outputs keep every channel
        changed = True
        while changed:
            changed = False

            def merge(tid, mask):
                nonlocal changed
                new = need[tid] | mask
                if not np.array_equal(new, need[tid]):
                    need[tid] = new
                    changed = True

            for node in reversed(self.nodes):
                kind = self.kind[id(node)]
                layer = node.operation
                out = id(node.outputs[0]) if len(node.outputs) == 1 else None
                ins = [id(t) for t in node.input_tensors]
                if kind == "conv":
                    kernel, _ = self.kernels[id(layer)]
                    if not need[out].any():  # a conv keeps at least one output channel
                        merge(out, np.arange(need[out].size) == 0)
                    conn = np.any(kernel != 0, axis=(0, 1))
                    uses = np.any(conn[:, need[out]], axis=1)
                    merge(ins[0], uses & ~self._foldable(layer, const[ins[0]]))
                elif kind == "dense":
                    kernel, _ = self.kernels[id(layer)]
                    if not need[out].any():  # a Dense keeps at least one unit
                        merge(out, np.arange(need[out].size) == 0)
                    uses = np.any(kernel[:, need[out]] != 0, axis=1)
                    merge(ins[0], uses & ~np.isfinite(const[ins[0]]))
                elif kind in ("pass", "tied"):
                    for i in ins:
                        merge(i, need[out])
                        merge(out, need[i])
                elif kind == "concat":
                    start = 0
                    for i in ins:
                        n = need[i].size
                        merge(i, need[out][start : start + n])
                        piece = np.zeros_like(need[out])
                        piece[start : start + n] = need[i]
                        merge(out, piece)
                        start += n
                else:
                    for i in ins:
                        merge(i, np.ones_like(need[i]))
                    for t in node.outputs:
                        merge(id(t), np.ones_like(need[id(t)]))
        return need

    @staticmethod
    def _foldable(layer, values):
        """Input channels whose constant value can move into the bias exactly: zero anywhere;
        non-zero where every output sees full windows (1×1 kernel, or "valid" padding)."""
        finite = np.isfinite(values)
        zero = finite & (values == 0)
        full_windows = layer.padding == "valid" or tuple(layer.kernel_size) == (1, 1)
        return zero | (finite if full_windows else zero)


def _macs_of(layer, node):
    """Multiply-accumulates per example of one conv / Dense call (None: unknown shape)."""
    out = node.outputs[0].shape
    if isinstance(layer, (SynapticConv2D, keras.layers.Conv2D)):
        spatial = out[1:3] if layer.data_format == "channels_last" else out[2:4]
        if None in spatial:
            return None
        kernel_shape = (layer.direction if isinstance(layer, SynapticConv2D) else layer.kernel).shape
        return int(np.prod(spatial)) * int(np.prod(kernel_shape))
    if type(layer) is keras.layers.Dense:
        inner = [d for d in out[1:-1]]
        if None in inner:
            return None
        return int(np.prod(layer.kernel.shape)) * int(np.prod(inner or [1]))
    return 0


def count_params_and_macs(model):
    """{"params": trainable + non-trainable parameters, "macs": multiply-accumulates per
    example of the Conv2D / SynapticConv2D / Dense layers (None if a spatial size is not
    static)} of a Functional or built Sequential model.

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    >>> keras_convx.pruning.count_params_and_macs(model)   # 6·6·4·9 + 4·3 MACs
    {'params': 55, 'macs': 1308}
    """
    per_node = [_macs_of(node.operation, node) for node in graph.layer_nodes(graph.graph_of(model))]
    macs = None if None in per_node else int(sum(per_node))
    return {"params": int(model.count_params()), "macs": macs}


def compact(model, return_report=False):
    """A smaller model with identical outputs: pruned channels physically removed.

    Every `SynapticConv2D` becomes a plain `Conv2D` (without its regularizers and
    constraints, which act on s and V) and every `make_prunable` twin its plain class (as in
    `strip`; a Conv2D or Dense keeps its initializers, regularizers and constraints), and
    over the whole Functional / Sequential graph:
    - an input channel of a conv (or a feature of a Dense) whose connections to the kept
      outputs are all pruned is not needed by that layer;
    - a channel that is constant over space (an output channel or Dense unit whose
      connections are all pruned: bias → batch norm → activation) is not needed either where
      its contribution can move into the consumer's bias exactly (zero; or a 1×1 / "valid"
      conv; or a Dense);
    - a channel nobody needs is removed from its producing conv or Dense (output slice), from
      the batch norms and element-wise layers on the way (their slices), and from its
      consumers (input slices); `Add`-like layers and `Concatenate` keep their inputs'
      channels aligned.
    Layers it does not understand (and layers called more than once) keep all their channels,
    so the result is always exact. Model outputs keep all channels; a nested model is one
    such layer (its own layers are stripped, their channels kept).

    Args:
        model: a Functional or built Sequential model.
        return_report: also return a dict with the parameter and MAC counts before and after
            (`params_before`, `params_after`, `macs_before`, `macs_after`) and, per layer,
            the (input, output) channels kept (`conv_channels_kept`) or (input features,
            units) kept (`dense_units_kept`).

    Returns:
        The compact model, or `(model, report)` with `return_report=True`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> prunable = keras_convx.pruning.make_prunable(model, granularity="channel")
    >>> keras_convx.pruning.update_masks(prunable, 0.5)   # two of conv's four filters
    {'conv': 0.5, 'total': 0.5}
    >>> small, report = keras_convx.pruning.compact(prunable, return_report=True)
    >>> report["conv_channels_kept"]     # (input channels, output channels) kept
    {'conv': (1, 2)}
    >>> report["macs_before"], report["macs_after"]
    (1308, 654)
    """
    if any(isinstance(layer, PrunableMixin) for layer in graph.all_layers(model)):
        model = strip(model)  # a make_prunable model: its plain layers, pruned weights zero
    analysis = _Analysis(model)
    const = analysis.constants()
    need = analysis.needed(const)
    plans = {}
    for node in analysis.nodes:
        kind = analysis.kind[id(node)]
        if kind in ("opaque", "tied", "concat"):
            continue
        layer = node.operation
        tin = id(node.input_tensors[0])
        tout = id(node.outputs[0])
        plans[id(layer)] = (kind, np.flatnonzero(need[tin]), np.flatnonzero(need[tout]),
                            const[tin])

    def replace(layer):
        plan = plans.get(id(layer))
        if plan is None:
            return _strip_replace(layer)
        kind, keep_in, keep_out, in_const = plan
        dropped = np.setdiff1d(np.arange(in_const.size), keep_in)
        folded = dropped[np.isfinite(in_const[dropped])]
        if kind == "conv":
            kernel, bias = analysis.kernels[id(layer)]
            shift = np.einsum("hwio,i->o", kernel[:, :, folded], in_const[folded])
            bias = (np.zeros(kernel.shape[-1]) if bias is None else bias) + shift
            use_bias = layer.bias is not None or bool(np.any(shift != 0))
            if isinstance(layer, SynapticConv2D):  # its regularizers act on s and V, not k
                config = graph.plain_conv_config(layer)
            else:  # a Conv2D keeps its initializers, regularizers and constraints
                config = layer.get_config()
            new = keras.layers.Conv2D.from_config(
                dict(config, filters=len(keep_out), use_bias=use_bias))
            dtype = keras.backend.standardize_dtype(layer.variable_dtype)
            weights = [kernel[:, :, keep_in][..., keep_out].astype(dtype)]
            if use_bias:
                weights.append(bias[keep_out].astype(dtype))
            return new, lambda n: n.set_weights(weights)
        if kind == "dense":
            kernel, bias = analysis.kernels[id(layer)]
            shift = in_const[folded] @ kernel[folded]
            bias = (np.zeros(kernel.shape[-1]) if bias is None else bias) + shift
            config = layer.get_config()
            config["use_bias"] = layer.bias is not None or bool(np.any(shift != 0))
            config["units"] = len(keep_out)
            new = layer.__class__.from_config(config)
            dtype = keras.backend.standardize_dtype(layer.variable_dtype)
            weights = [kernel[keep_in][:, keep_out].astype(dtype)]
            if config["use_bias"]:
                weights.append(bias[keep_out].astype(dtype))
            return new, lambda n: n.set_weights(weights)
        if isinstance(layer, keras.layers.BatchNormalization):
            new = layer.__class__.from_config(layer.get_config())
            weights = [w[keep_in] for w in layer.get_weights()]
            return new, lambda n: n.set_weights(weights)
        return None

    small = graph.rewrite(model, replace)
    if not return_report:
        return small
    before, after = count_params_and_macs(model), count_params_and_macs(small)
    kept = {"conv": {}, "dense": {}}
    for node in analysis.nodes:
        kind = analysis.kind[id(node)]
        if kind in kept:
            layer = node.operation
            kept[kind][layer.name] = (len(plans[id(layer)][1]), len(plans[id(layer)][2]))
    report = {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "conv_channels_kept": kept["conv"], "dense_units_kept": kept["dense"],
    }
    return small, report
