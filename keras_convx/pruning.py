"""Connection-level pruning for Keras 3 on every backend (synaptic strength).

The split follows Torch-Pruning and tfmot: importance scoring (`importance`), masking on a
schedule (`prune`, the schedules here, `keras_convx.callbacks.SynapticPruning`) and physical
removal (`strip`, `compact`) are separate steps.

- Schedules: `ConstantSparsity`, `PolynomialDecay` (serialisable, tfmot's semantics).
- `make_synaptic(model)`: an equivalent model whose `Conv2D`s are `SynapticConv2D`s.
- `prune(model, sparsity, scope, criterion)`: one-shot masks from the connection importance.
- `sparsity(model)`: connection sparsity per layer and overall.
- `strip(model)`: an equivalent model with plain `Conv2D`s (identical outputs).
- `compact(model)`: removes the channels whose connections are all pruned (and the matching
  batch-norm / next-layer slices) — a smaller, faster model with identical outputs.
- `count_params_and_macs(model)`: parameters and multiply-accumulates per example.
"""

import abc

import keras
import numpy as np
from keras import ops

from keras_convx import arguments
from keras_convx import graph
from keras_convx._registry import register
from keras_convx.layers.synaptic import SynapticConv2D
from keras_convx.ops import synaptic as syn

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruningSchedule",
    "compact",
    "count_params_and_macs",
    "get_schedule",
    "importance",
    "make_synaptic",
    "prunable_layers",
    "prune",
    "sparsity",
    "strip",
]

SCOPES = ("global", "layer")


def _sparsity_value(name, value, allow_zero=True):
    return arguments.fraction(name, value, allow_zero)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class PruningSchedule(abc.ABC):
    """Base class: `schedule(step) -> (should_prune, sparsity)` for an optimizer step.

    Masks are updated at steps `begin_step + n·frequency` (n ≥ 0) up to `end_step` (inclusive;
    -1 = no end). Subclasses define `sparsity_at(step)`; both are plain Python (the callback
    evaluates them between steps, never inside the compiled train step).
    """

    def __init__(self, begin_step=0, end_step=-1, frequency=100):
        self.begin_step = arguments.integer("begin_step", begin_step, minimum=0)
        self.end_step = arguments.integer("end_step", end_step, minimum=-1)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                f"Expected end_step >= begin_step (or -1). Received: begin_step={begin_step}, "
                f"end_step={end_step}"
            )
        self.frequency = arguments.integer("frequency", frequency)

    def should_prune(self, step):
        step = int(step)
        if step < self.begin_step or (self.end_step != -1 and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0

    @abc.abstractmethod
    def sparsity_at(self, step):
        """The target sparsity (float in [0, 1)) at optimizer step `step`."""

    def __call__(self, step):
        return self.should_prune(step), self.sparsity_at(step)

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class ConstantSparsity(PruningSchedule):
    """Prune to a constant `target_sparsity` at every update step.

    Args:
        target_sparsity: float in [0, 1), the fraction of connections pruned.
        begin_step, end_step, frequency: the update steps (see `PruningSchedule`).

    Example:

    >>> schedule = keras_convx.pruning.ConstantSparsity(0.9, begin_step=200, frequency=50)
    >>> schedule(200), schedule(210)     # ((True, 0.9), (False, 0.9))
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        super().__init__(begin_step, end_step, frequency)
        self.target_sparsity = _sparsity_value("target_sparsity", target_sparsity)

    def sparsity_at(self, step):
        return self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, **super().get_config()}


@register
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from `initial_sparsity` to `final_sparsity` over [begin_step, end_step]:

        sparsity(t) = final + (initial − final) · (1 − p)^power,
        p = clip((t − begin_step) / (end_step − begin_step), 0, 1)

    (tfmot's `PolynomialDecay`; `power=3` prunes fast early and slowly near the end).

    Args:
        initial_sparsity, final_sparsity: floats in [0, 1).
        begin_step: int ≥ 0; end_step: int > begin_step (required).
        power: float > 0 (default 3).
        frequency: update period in steps (default 100).
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        super().__init__(begin_step, end_step, frequency)
        if self.end_step <= self.begin_step:
            raise ValueError(
                "Expected end_step > begin_step for PolynomialDecay. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        self.initial_sparsity = _sparsity_value("initial_sparsity", initial_sparsity)
        self.final_sparsity = _sparsity_value("final_sparsity", final_sparsity)
        self.power = arguments.number("power", power, 0, exclusive_minimum=True)
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(
                "Expected final_sparsity >= initial_sparsity (masks never regrow, so sparsity "
                f"cannot decrease). Received: initial_sparsity={self.initial_sparsity}, "
                f"final_sparsity={self.final_sparsity}")

    def sparsity_at(self, step):
        p = (int(step) - self.begin_step) / (self.end_step - self.begin_step)
        p = min(max(p, 0.0), 1.0)
        span = self.initial_sparsity - self.final_sparsity
        return self.final_sparsity + span * (1.0 - p) ** self.power

    def get_config(self):
        config = super().get_config()
        config.update({"initial_sparsity": self.initial_sparsity,
                       "final_sparsity": self.final_sparsity, "power": self.power})
        return config


_SCHEDULES = {"constant_sparsity": ConstantSparsity, "polynomial_decay": PolynomialDecay}


def get_schedule(identifier):
    """A `PruningSchedule` from an instance, a `keras.saving.serialize_keras_object` dict or a
    `{"class_name": "constant_sparsity" | "polynomial_decay", "config": {...}}` dict.
    Raises ValueError for anything else, naming the accepted schedules."""
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = identifier["class_name"]
        cls = _SCHEDULES.get(str(name).lower())
        if cls is not None:
            return cls.from_config(identifier.get("config", {}))
        try:
            obj = keras.saving.deserialize_keras_object(identifier)
        except (TypeError, ValueError):
            obj = None
        if isinstance(obj, PruningSchedule):
            return obj
    raise ValueError(
        "Expected schedule to be a keras_convx.pruning.PruningSchedule (ConstantSparsity, "
        f"PolynomialDecay) or its serialized dict; accepted names: {sorted(_SCHEDULES)}. "
        f"Received: schedule={identifier!r}"
    )


# ---------------------------------------------------------------------------------------------
# Scoring and masking
# ---------------------------------------------------------------------------------------------


def prunable_layers(model):
    """Every `SynapticConv2D` in `model` (nested models included), in model order."""
    if isinstance(model, SynapticConv2D):
        return [model]
    return [layer for layer in graph.all_layers(model) if isinstance(layer, SynapticConv2D)]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def importance(layer, criterion="strength"):
    """NumPy (c_in/groups, filters) importance of the connections of a `SynapticConv2D`.

    `criterion`: `"strength"` (|m·s|), `"kernel_l1"` (Σ|W_ij| of the effective kernel) or a
    callable `criterion(layer) -> array` of that shape. Pruned connections score 0.
    """
    if callable(criterion):
        scores = np.asarray(criterion(layer), dtype=np.float64)
        if scores.shape != tuple(layer.mask.shape):
            raise ValueError(
                f"The criterion returned shape {scores.shape} for {layer.name!r}; expected "
                f"{tuple(layer.mask.shape)} (c_in/groups, filters)."
            )
        return scores * _np(layer.mask)
    arguments.choice("criterion", criterion, syn.CRITERIA)
    return syn.importance_scores(_np(layer.masked_strength()), _np(layer.kernel), criterion)


def check_criterion(criterion):
    if not callable(criterion):
        arguments.choice("criterion", criterion, syn.CRITERIA)
    return criterion


def check_normalization(normalization):
    if normalization not in syn.NORMALIZATIONS:
        raise ValueError(f"Expected normalization to be one of {list(syn.NORMALIZATIONS)}. "
                         f"Received: normalization={normalization!r}")
    return normalization


def prune(model, sparsity, scope="global", criterion="strength", layers=None,
          normalization=None):
    """Sets the connection masks so that `sparsity` of the connections are pruned (one shot).

    Args:
        model: a model (or one `SynapticConv2D`).
        sparsity: float in [0, 1): the target fraction of pruned connections.
        scope: `"global"` (one threshold over all prunable layers: the paper's choice, the
            strengths being comparable across layers) or `"layer"` (each layer pruned to
            `sparsity` on its own).
        criterion: `"strength"`, `"kernel_l1"` or a callable (see `importance`).
        layers: optional subset of the prunable layers.
        normalization: None (raw scores, the paper), `"channel"` or `"layer"`: scores divided
            by their root mean square per output channel / per layer before the global
            ranking (`keras_convx.ops.synaptic.normalize_scores`). With a batch norm after
            each conv the raw strengths of a channel have an arbitrary common scale, and a
            raw global threshold can empty a whole layer; `"channel"` prevents that.

    Masks only lose connections: already pruned ones stay pruned (and count towards the
    target). Returns `sparsity(model)` after pruning. Raises ValueError if the model has no
    `SynapticConv2D`.
    """
    sparsity_value = _sparsity_value("sparsity", sparsity)
    arguments.choice("scope", scope, SCOPES)
    check_criterion(criterion)
    check_normalization(normalization)
    layers = list(layers) if layers is not None else prunable_layers(model)
    if not layers:
        raise ValueError(
            "Expected a model with at least one keras_convx.layers.SynapticConv2D to prune; "
            "convert Conv2D layers with keras_convx.pruning.make_synaptic(model)."
        )
    scores = [syn.normalize_scores(importance(layer, criterion), normalization)
              for layer in layers]
    masks = [_np(layer.mask) for layer in layers]
    if scope == "global":
        new_masks = syn.masks_for_sparsity(scores, masks, sparsity_value)
    else:
        new_masks = [syn.masks_for_sparsity([s], [m], sparsity_value)[0]
                     for s, m in zip(scores, masks)]
    for layer, mask in zip(layers, new_masks):
        layer.set_mask(mask)
    return _sparsity_report(model)


def sparsity(model):
    """{layer name: connection sparsity, ..., "total": overall sparsity} of the prunable layers
    (the total weights layers by their number of connections)."""
    layers = prunable_layers(model)
    report, pruned, total = {}, 0, 0
    for layer in layers:
        mask = _np(layer.mask)
        report[layer.name] = float(np.mean(mask == 0))
        pruned += int(np.sum(mask == 0))
        total += mask.size
    report["total"] = pruned / total if total else 0.0
    return report


_sparsity_report = sparsity


# ---------------------------------------------------------------------------------------------
# Model rewriting
# ---------------------------------------------------------------------------------------------


def make_synaptic(model, layers=None, **overrides):
    """An equivalent model whose `keras.layers.Conv2D`s are `SynapticConv2D`s (identical
    outputs, all connections live), so an existing model can be pruned without rebuilding it.

    Args:
        model: a Functional or built Sequential model.
        layers: optional names of the Conv2D layers to convert (default: all).
        **overrides: SynapticConv2D arguments for the converted layers (e.g.
            `strength_regularizer=keras.regularizers.L1(1e-3)`).

    Example:

    >>> synaptic = keras_convx.pruning.make_synaptic(model)
    >>> synaptic.compile(...); synaptic.fit(..., callbacks=[SynapticPruning(schedule)])
    """
    names = None if layers is None else set(layers)

    def replace(layer):
        if type(layer) is not keras.layers.Conv2D or (names is not None and layer.name not in names):
            return None
        new = SynapticConv2D.from_conv2d(layer, **overrides)
        return new, lambda n: None

    return graph.rewrite(model, replace)


def _strip_replace(layer):
    """`graph.rewrite`'s replacement of a SynapticConv2D by the equivalent plain Conv2D (None for
    any other layer)."""
    if not isinstance(layer, SynapticConv2D):
        return None
    new = keras.layers.Conv2D(**graph.plain_conv_config(layer))
    weights = [_np(w) for w in layer.equivalent_conv() if w is not None]  # the fold protocol
    return new, lambda n: n.set_weights(weights)


def strip(model):
    """An equivalent model in which every `SynapticConv2D` is a plain `keras.layers.Conv2D`
    with the effective kernel m·s·V/‖V‖ (pruned slices exactly zero) and the same bias:
    identical outputs, no pruning state. Other layers are copied with their weights.

    Example:

    >>> deployable = keras_convx.pruning.strip(pruned_model)
    >>> deployable.save("model.keras")      # plain Keras layers only
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
    kernel = _np(layer.kernel).astype(np.float64)
    bias = None if layer.bias is None else _np(layer.bias).astype(np.float64)
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
            if kind == "conv":
                kernel, bias = self.kernels[id(layer)]
                dead = np.all(kernel == 0, axis=(0, 1, 2))
                values = np.zeros(kernel.shape[-1]) if bias is None else bias.copy()
                values = self._activate(layer.activation, values)
                const[out] = np.where(dead, values, np.nan)
            elif kind == "pass":
                const[out] = self._through(layer, const[ins[0]], node)
            elif kind == "tied" and isinstance(layer, keras.layers.Add):
                const[out] = np.sum([const[i] for i in ins], axis=0)
            elif kind == "concat":
                const[out] = np.concatenate([const[i] for i in ins])
        return const

    @staticmethod
    def _activate(activation, values):
        if activation is None:
            return values
        return _np(activation(ops.convert_to_tensor(values.astype(np.float32)))).astype(
            np.float64)

    def _through(self, layer, values, node):
        """A pass-through layer applied to per-channel constants (NaN: not constant)."""
        finite = np.isfinite(values)
        if not finite.any():
            return values
        t = node.input_tensors[0]
        fill = np.where(finite, values, 0.0).astype(np.float32)
        if len(t.shape) == 4:
            shape = [1, 1, 1, 1]
            shape[self.channel_axis] = fill.size
            spatial = [d or 6 for d in (t.shape[1:3] if self.channel_axis == -1 else t.shape[2:4])]
            x = np.ones((1, *spatial, 1) if self.channel_axis == -1 else (1, 1, *spatial),
                        np.float32) * fill.reshape(shape)
        else:
            x = fill[None]
        y = _np(layer(ops.convert_to_tensor(x), training=False)
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
                    merge(out, np.ones_like(need[out]))  # Dense units are never removed
                    uses = np.any(kernel != 0, axis=1)
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
    static)} of a Functional or built Sequential model."""
    per_node = [_macs_of(node.operation, node) for node in graph.layer_nodes(graph.graph_of(model))]
    macs = None if None in per_node else int(sum(per_node))
    return {"params": int(model.count_params()), "macs": macs}


def compact(model, return_report=False):
    """A smaller model with identical outputs: pruned channels physically removed.

    Every `SynapticConv2D` becomes a plain `Conv2D` (as in `strip`), and over the whole
    Functional / Sequential graph:
    - an input channel of a conv (or a feature of a Dense) whose connections to the kept
      outputs are all pruned is not needed by that layer;
    - a channel that is constant over space (an output channel whose connections are all
      pruned: bias → batch norm → activation) is not needed either where its contribution can
      move into the consumer's bias exactly (zero; or a 1×1 / "valid" conv; or a Dense);
    - a channel nobody needs is removed from its producing conv (output slice), from the batch
      norms and element-wise layers on the way (their slices), and from its consumers (input
      slices); `Add`-like layers and `Concatenate` keep their inputs' channels aligned.
    Layers it does not understand (and layers called more than once) keep all their channels,
    so the result is always exact. Model outputs keep all channels.

    Args:
        model: a Functional or built Sequential model.
        return_report: also return a dict with the parameter and MAC counts before and after
            and the channels kept per layer.

    Returns:
        The compact model, or `(model, report)` with `return_report=True`.

    Example:

    >>> small, report = keras_convx.pruning.compact(pruned_model, return_report=True)
    >>> report["macs_before"], report["macs_after"]
    """
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
            new = keras.layers.Conv2D(
                **graph.plain_conv_config(layer, filters=len(keep_out), use_bias=use_bias))
            weights = [kernel[:, :, keep_in][..., keep_out].astype(np.float32)]
            if use_bias:
                weights.append(bias[keep_out].astype(np.float32))
            return new, lambda n: n.set_weights(weights)
        if kind == "dense":
            kernel, bias = analysis.kernels[id(layer)]
            shift = in_const[folded] @ kernel[folded]
            bias = (np.zeros(kernel.shape[-1]) if bias is None else bias) + shift
            config = layer.get_config()
            config["use_bias"] = layer.bias is not None or bool(np.any(shift != 0))
            new = layer.__class__.from_config(config)
            weights = [kernel[keep_in].astype(np.float32)]
            if config["use_bias"]:
                weights.append(bias.astype(np.float32))
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
    kept = {}
    for node in analysis.nodes:
        if analysis.kind[id(node)] == "conv":
            layer = node.operation
            kept[layer.name] = (len(plans[id(layer)][1]), len(plans[id(layer)][2]))
    report = {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "conv_channels_kept": kept,
    }
    return small, report
