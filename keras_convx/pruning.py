"""Connection-level pruning for Keras 3 on every backend (synaptic strength).

The split follows Torch-Pruning and tfmot: importance scoring (`importance`), masking on a
schedule (`prune`, the schedules here, `keras_convx.callbacks.SynapticPruning`) and physical
removal (`strip`, `compact`) are separate steps.

- Any Keras 3 model (from `keras_convx.prunable`): `make_prunable(model, granularity)` (masks on
  Dense, Conv*, EinsumDense, depthwise/separable and keras_convx's conv layers),
  `update_masks(model, sparsity)`, `sparsity_report(model)`; `callbacks.Pruning` on a schedule.
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
from keras_convx.compaction import compact  # noqa: F401  (physical removal lives there)
from keras_convx.compaction import count_params_and_macs  # noqa: F401
from keras_convx.compaction import strip  # noqa: F401
from keras_convx.layers.synaptic import SynapticConv2D
from keras_convx.prunable import make_prunable  # noqa: F401  (any model: keras_convx.prunable)
from keras_convx.prunable import masked_layers  # noqa: F401
from keras_convx.pruning_masks import SCOPES as MASK_SCOPES  # noqa: F401
from keras_convx.pruning_masks import check_normalization
from keras_convx.pruning_masks import mask_counts
from keras_convx.pruning_masks import sparsity_report  # noqa: F401
from keras_convx.pruning_masks import update_masks  # noqa: F401
from keras_convx.ops import synaptic as syn
from keras_convx.ops.core import to_numpy

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

    Example:

    >>> class Steps(keras_convx.pruning.PruningSchedule):
    ...     def sparsity_at(self, step):
    ...         return 0.25 if step < 100 else 0.5
    >>> schedule = Steps(frequency=50)
    >>> schedule(50), schedule(120), schedule(150)     # (update at this step?, sparsity)
    ((True, 0.25), (False, 0.5), (True, 0.5))
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
    >>> schedule(200), schedule(210)     # (update at this step?, sparsity)
    ((True, 0.9), (False, 0.9))
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

    Example:

    >>> schedule = keras_convx.pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100,
    ...                                                frequency=10)
    >>> [(update, round(sparsity, 3)) for update, sparsity in map(schedule, (0, 5, 50, 100))]
    [(True, 0.0), (False, 0.114), (True, 0.7), (True, 0.8)]
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
    Raises ValueError for anything else, naming the accepted schedules.

    Example:

    >>> keras_convx.pruning.get_schedule(
    ...     {"class_name": "constant_sparsity", "config": {"target_sparsity": 0.5}})
    ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=100)
    """
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
    """Every `SynapticConv2D` in `model` (nested models included), in model order.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 4)), keras_convx.layers.SynapticConv2D(8, 3, name="conv"),
    ...     keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> [layer.name for layer in keras_convx.pruning.prunable_layers(model)]
    ['conv']
    """
    if isinstance(model, SynapticConv2D):
        return [model]
    return [layer for layer in graph.all_layers(model) if isinstance(layer, SynapticConv2D)]


def importance(layer, criterion="strength"):
    """NumPy (c_in/groups, filters) importance of the connections of a `SynapticConv2D`.

    `criterion`: `"strength"` (|m·s|), `"kernel_l1"` (Σ|W_ij| of the effective kernel) or a
    callable `criterion(layer) -> array` of that shape. Pruned connections score 0.

    Example:

    >>> conv = keras_convx.layers.SynapticConv2D(8, 3)
    >>> conv.build((None, 8, 8, 4))
    >>> keras_convx.pruning.importance(conv).shape             # one score per connection
    (4, 8)
    """
    if callable(criterion):
        scores = np.asarray(criterion(layer), dtype=np.float64)
        if scores.shape != tuple(layer.mask.shape):
            raise ValueError(
                f"The criterion returned shape {scores.shape} for {layer.name!r}; expected "
                f"{tuple(layer.mask.shape)} (c_in/groups, filters)."
            )
        return scores * to_numpy(layer.mask)
    arguments.choice("criterion", criterion, syn.CRITERIA)
    return syn.importance_scores(to_numpy(layer.masked_strength()), to_numpy(layer.kernel), criterion)


def check_criterion(criterion):
    if not callable(criterion):
        arguments.choice("criterion", criterion, syn.CRITERIA)
    return criterion


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
        layers: optional subset of the prunable layers (layers or names).
        normalization: None (raw scores, the paper), `"channel"` or `"layer"`: scores divided
            by their root mean square per output channel / per layer before the global
            ranking (`keras_convx.ops.synaptic.normalize_scores`). With a batch norm after
            each conv the raw strengths of a channel have an arbitrary common scale, and a
            raw global threshold can empty a whole layer; `"channel"` prevents that.

    Masks only lose connections: already pruned ones stay pruned (and count towards the
    target). Returns `sparsity(model)` after pruning. Raises ValueError if the model has no
    `SynapticConv2D`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 4)), keras_convx.layers.SynapticConv2D(8, 3, name="conv"),
    ...     keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> keras_convx.pruning.prune(model, 0.5)                   # 16 of the 4 × 8 connections
    {'conv': 0.5, 'total': 0.5}
    """
    sparsity_value = _sparsity_value("sparsity", sparsity)
    arguments.choice("scope", scope, SCOPES)
    check_criterion(criterion)
    check_normalization(normalization)
    layers = arguments.members("layers", layers, prunable_layers(model), "SynapticConv2D layers",
                               accept=lambda layer: isinstance(layer, SynapticConv2D))
    if not layers:
        raise ValueError(
            "Expected a model with at least one keras_convx.layers.SynapticConv2D to prune; "
            "convert Conv2D layers with keras_convx.pruning.make_synaptic(model)."
        )
    scores = [syn.normalize_scores(importance(layer, criterion), normalization)
              for layer in layers]
    masks = [to_numpy(layer.mask) for layer in layers]
    if scope == "global":
        new_masks = syn.masks_for_sparsity(scores, masks, sparsity_value)
    else:
        new_masks = [syn.masks_for_sparsity([s], [m], sparsity_value)[0]
                     for s, m in zip(scores, masks)]
    for layer, mask in zip(layers, new_masks):
        layer.set_mask(mask)
    return _sparsity_report(model)


def sparsity(model):
    """`{layer name: pruned fraction, ..., "total": overall}` of every pruned layer: the
    connections of each `SynapticConv2D`, the masked entries of each `make_prunable` layer.
    The total counts connections when the model has only synaptic layers (the paper's
    count), weights when it has `make_prunable` layers too (a connection holds k·k).

    Example:

    >>> conv = keras_convx.layers.SynapticConv2D(8, 3, name="conv")
    >>> model = keras.Sequential([keras.Input((8, 8, 4)), conv])
    >>> mask = np.ones((4, 8), "float32")
    >>> mask[:, :2] = 0                                        # 8 of the 32 connections
    >>> _ = conv.mask.assign(mask)
    >>> keras_convx.pruning.sparsity(model)
    {'conv': 0.25, 'total': 0.25}
    """
    masked = masked_layers(model)
    report, pruned, total = {}, 0, 0
    for layer in prunable_layers(model):
        mask = to_numpy(layer.mask)
        zeros = int(np.sum(mask == 0))
        report[layer.name] = zeros / mask.size
        per = int(np.prod(layer.kernel_size)) if masked else 1
        pruned, total = pruned + zeros * per, total + mask.size * per
    for layer in masked:
        zeros, size = mask_counts(layer)
        report[layer.name] = zeros / size if size else 0.0
        pruned, total = pruned + zeros, total + size
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
        layers: optional Conv2D layers (or their names) to convert (default: all);
            ValueError for a name the model's Conv2D layers do not have.
        **overrides: SynapticConv2D arguments for the converted layers (e.g.
            `strength_regularizer=keras.regularizers.L1(1e-3)`).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> synaptic = keras_convx.pruning.make_synaptic(model)
    >>> [type(layer).__name__ for layer in synaptic.layers]
    ['SynapticConv2D', 'GlobalAveragePooling2D', 'Dense']
    >>> x = np.random.rand(2, 8, 8, 1)
    >>> np.allclose(synaptic.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    True
    """
    convs = [layer for layer in graph.all_layers(model) if type(layer) is keras.layers.Conv2D]
    names = {layer.name for layer in arguments.members("layers", layers, convs, "Conv2D layers")}

    def replace(layer):
        if type(layer) is not keras.layers.Conv2D or layer.name not in names:
            return None
        new = SynapticConv2D.from_conv2d(layer, **overrides)
        return new, lambda n: None

    return graph.rewrite(model, replace)
