"""Pruning for any Keras 3 model: masks on the weights of core Keras and keras_convx layers.

`make_prunable(model, granularity)` rewrites a Functional or Sequential model so that every
prunable layer becomes its `Prunable*` twin (a registered subclass with the same config and
weights, identical outputs) carrying one 0/1 mask per pruned weight: a non-trainable
variable, saved in `.keras` files like any weight. While the layer runs, its pruned weights
are read as `weight · mask`, so a pruned entry has exactly zero gradient; `update_masks`
(`keras_convx.pruning_masks`; the `keras_convx.callbacks.Pruning` schedule) also zeroes its
value and the optimizer's slots for it (momentum, Adam's moments), so it stays exactly zero
with any Keras optimizer.

Granularities (`granularity=`, per model or `{layer name: granularity}`):

- `"weight"`: single entries (unstructured; tfmot's `prune_low_magnitude`);
- `"connection"`: one k×k slice per (input channel → output channel) pair (the synaptic one);
- `"channel"`: whole output channels / units, their bias included (structured; `compact`
  removes them);
- `"m:n"`, e.g. `"2:4"`: m kept in every n consecutive entries along the input axis (tfmot's
  `sparsity_m_by_n`, NVIDIA's 2:4 sparse tensor cores).

Which weights a layer prunes, and their output/input axes, is the layer's `PRUNABLE_WEIGHTS`
spec (`{attribute: (output axes, input axes, link)}`; weights with the same `link` are scored
together, as the log-polar ring/sector kernel and its centre weight): a table for Keras' own
layers here, a class attribute on keras_convx's.
"""

import inspect

import keras

from keras_convx import arguments
from keras_convx import graph
from keras_convx._registry import register
from keras_convx.layers import GroupConv2D
from keras_convx.layers import GroupLiftConv2D
from keras_convx.layers import LogPolarConv2D
from keras_convx.layers import SharedBasisConv2D

__all__ = ["GRANULARITIES", "is_prunable", "make_prunable", "masked_layers", "parse_granularity",
           "prunable_weights"]

GRANULARITIES = ("weight", "connection", "channel", "m:n")

_CONV = {"_kernel": ((-1,), (-2,), "kernel")}
_TRANSPOSE = {"kernel": ((-2,), (-1,), "kernel")}
_DEPTHWISE = {"kernel": ((-2, -1), (), "kernel")}
# Keras' own layers: {class: {stored attribute: (output axes, input axes, link)}}. Dense, the
# convolutions and EinsumDense store their kernel as `_kernel` behind a `kernel` property.
KERAS_WEIGHTS = {
    keras.layers.Dense: {"_kernel": ((1,), (0,), "kernel")},
    keras.layers.EinsumDense: None,  # from the equation (`prunable_weights`)
    keras.layers.Conv1D: _CONV,
    keras.layers.Conv2D: _CONV,
    keras.layers.Conv3D: _CONV,
    keras.layers.Conv1DTranspose: _TRANSPOSE,
    keras.layers.Conv2DTranspose: _TRANSPOSE,
    keras.layers.Conv3DTranspose: _TRANSPOSE,
    keras.layers.DepthwiseConv1D: _DEPTHWISE,
    keras.layers.DepthwiseConv2D: _DEPTHWISE,
    keras.layers.SeparableConv1D: {"depthwise_kernel": ((-2, -1), (), "depthwise"),
                                   "pointwise_kernel": ((-1,), (-2,), "pointwise")},
    keras.layers.SeparableConv2D: {"depthwise_kernel": ((-2, -1), (), "depthwise"),
                                   "pointwise_kernel": ((-1,), (-2,), "pointwise")},
}
CONVX_LAYERS = (LogPolarConv2D, GroupLiftConv2D, GroupConv2D, SharedBasisConv2D)


def parse_granularity(value, name="granularity"):
    """`"weight"`, `"connection"`, `"channel"` or `"m:n"` (m < n, both ≥ 1) → a tuple
    (`("weight",)`, ..., `("m:n", m, n)`); ValueError naming `name` otherwise."""
    if isinstance(value, str) and ":" in value:
        parts = value.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            m, n = int(parts[0]), int(parts[1])
            if 1 <= m < n:
                return ("m:n", m, n)
        raise ValueError(f'Expected {name} "m:n" with integers 1 <= m < n (e.g. "2:4"). '
                         f"Received: {name}={value!r}")
    return (arguments.choice(name, value, GRANULARITIES[:3]),)


def _einsum_weights(layer):
    inputs, output = layer.equation.replace(" ", "").split("->")
    kernel = inputs.split(",")[1]
    out = tuple(i for i, c in enumerate(kernel) if c in output)
    contracted = tuple(i for i, c in enumerate(kernel) if c not in output)
    return {"_kernel": (out, contracted, "kernel")}


def prunable_weights(layer):
    """The layer's `{attribute: (output axes, input axes, link)}` pruning spec, or None when
    keras_convx cannot prune its class (exact classes: a subclass may compute differently).
    Weights a built layer does not have (a log-polar layer without centre weight) are left
    out."""
    cls = _base_class(type(layer))
    if cls is keras.layers.EinsumDense:
        spec = _einsum_weights(layer)
    elif cls in KERAS_WEIGHTS:
        spec = KERAS_WEIGHTS[cls]
    elif cls in CONVX_LAYERS:
        spec = cls.PRUNABLE_WEIGHTS
    else:
        return None
    if getattr(layer, "granularity", None) == "channel":
        # A pruned channel is removed whole: its bias goes with the output weight's channels.
        spec = dict(spec, bias=((0,), (), list(spec.values())[-1][2]))
    if layer.built:
        spec = {name: axes for name, axes in spec.items() if _stored(layer, name) is not None}
    return spec


def _stored(layer, name):
    """The variable stored under attribute `name` (unmasked on a prunable twin)."""
    if isinstance(layer, PrunableMixin):
        return layer.__dict__.get(_MaskedWeight(name).slot)
    return getattr(layer, name, None)


def is_prunable(layer):
    """True for the layers `make_prunable` converts (and their prunable twins)."""
    return prunable_weights(layer) is not None


def _base_class(cls):
    return getattr(cls, "pruned_class", cls)


# -- the prunable twins ------------------------------------------------------------------------


class _MaskedWeight:
    """A data descriptor for a pruned weight attribute: stores the variable; inside the
    layer's `call` a read gives `variable · mask` (in the variable's read dtype), elsewhere
    the variable itself."""

    def __init__(self, name):
        self.name = name
        self.slot = f"_unmasked{name}" if name.startswith("_") else f"_unmasked_{name}"

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        variable = layer.__dict__.get(self.slot)
        if variable is None or not layer.__dict__.get("_pruning_in_call", False):
            return variable
        mask = layer.pruning_masks.get(self.name)
        if mask is None:  # a bias without mask (granularities other than "channel")
            return variable
        value = variable.value  # autocast to the compute dtype under mixed precision
        return value * keras.ops.cast(mask, value.dtype)

    def __set__(self, layer, value):
        layer.__dict__[self.slot] = value


class PrunableMixin:
    """What a `Prunable*` twin adds to its Keras class: the masks and the masked reads.

    Attributes:
        granularity: the granularity string the masks follow (`"weight"`, ..., `"2:4"`).
        round_to: for `"channel"`: the kept channel count is a multiple of it.
        pruning_masks: `{attribute: mask variable}` (created in `build`).
    """

    pruned_class = None  # the Keras / keras_convx class this twin extends

    def __init__(self, *args, granularity="weight", round_to=1, **kwargs):
        super().__init__(*args, **kwargs)
        parse_granularity(granularity)
        self.granularity = granularity
        self.round_to = arguments.integer("round_to", round_to)
        self.pruning_masks = {}

    def build(self, input_shape):
        super().build(input_shape)
        for name in prunable_weights(self):
            variable = self.pruned_variable(name)
            if variable is None:  # no bias, no centre weight
                continue
            self.pruning_masks[name] = self.add_weight(
                name=f"{variable.name}_mask", shape=variable.shape, initializer="ones",
                trainable=False, dtype=variable.dtype, autocast=False)

    def pruned_variable(self, name):
        """The stored (unmasked) variable of pruned attribute `name`."""
        return _stored(self, name)

    def unmasked_weights(self):
        """`self.weights` without the masks: the weights of the plain class, in its order."""
        masks = {id(m) for m in self.pruning_masks.values()}
        return [v for v in self.weights if id(v) not in masks]

    def _base_saves_every_variable(self):
        # Dense, EinsumDense and the convolutions write only their own weights (a custom
        # `save_own_variables`, for quantization); the base Layer's writes every variable.
        return type(self).pruned_class.save_own_variables is keras.layers.Layer.save_own_variables

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and not self._base_saves_every_variable():
            first = len(store.keys())
            for i, mask in enumerate(self.pruning_masks.values()):
                store[str(first + i)] = mask

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if not self._base_saves_every_variable():
            first = len(store.keys()) - len(self.pruning_masks)
            for i, mask in enumerate(self.pruning_masks.values()):
                mask.assign(store[str(first + i)])

    def get_config(self):
        config = super().get_config()
        config.update({"granularity": self.granularity, "round_to": self.round_to})
        return config


def _twin(cls):
    """The registered `Prunable<cls>`: the mixin, a masked descriptor per pruned attribute,
    and a `call` with `cls.call`'s signature (Keras reads it for `training` and `mask`)."""
    names = ("_kernel",) if cls is keras.layers.EinsumDense else tuple(
        KERAS_WEIGHTS.get(cls) or cls.PRUNABLE_WEIGHTS)
    names += ("bias",)  # masked with "channel" granularity

    def call(self, *args, **kwargs):
        self.__dict__["_pruning_in_call"] = True
        try:
            return cls.call(self, *args, **kwargs)
        finally:
            self.__dict__["_pruning_in_call"] = False

    call.__signature__ = inspect.signature(cls.call)
    attributes = {name: _MaskedWeight(name) for name in names}
    attributes.update(pruned_class=cls, call=call, __module__=__name__, __doc__=(
        f"`{cls.__name__}` with pruning masks (made by `keras_convx.pruning.make_prunable`; "
        f"see `keras_convx.prunable.PrunableMixin`)."))
    return register(type(f"Prunable{cls.__name__}", (PrunableMixin, cls), attributes))


TWINS = {cls: _twin(cls) for cls in (*KERAS_WEIGHTS, *CONVX_LAYERS)}


# -- making a model prunable ------------------------------------------------------------------


def _selector(layers):
    if layers is None:
        return None
    items = layers if isinstance(layers, (list, tuple, set)) else [layers]
    for item in items:
        if not (isinstance(item, str) or isinstance(item, type) or callable(item)):
            raise TypeError("Expected layers to be layer names, layer classes or predicates. "
                            f"Received: {item!r}")
    return list(items)


def _selected(layer, items):
    """(selected, named): whether `items` select `layer`, and whether by its name."""
    if items is None:
        return True, False
    for item in items:
        if isinstance(item, str):
            if item == layer.name:
                return True, True
        elif isinstance(item, type):
            if isinstance(layer, item):
                return True, False
        elif item(layer):
            return True, False
    return False, False


def _depthwise_only(layer):
    """True for a layer whose every prunable weight keeps channels apart (no input axis):
    its output channels are its input channels."""
    return all(len(in_axes) != 1 for _, in_axes, _ in prunable_weights(layer).values())


def _why_not(layer, granularity, output_layers):
    """None when `layer` can take `granularity`, else the reason (a sentence)."""
    spec = prunable_weights(layer)
    if spec is None:
        return f"{type(layer).__name__} is not a prunable layer type"
    kind = granularity[0]
    if kind == "channel" and layer.name in output_layers:
        return "its channels reach a model output (through no other prunable layer)"
    if kind == "m:n":
        n = granularity[2]
        for name, (_, in_axes, _) in spec.items():
            shape = _stored(layer, name).shape if layer.built else None
            if len(in_axes) != 1:
                return f"its weight {name!r} has no single input axis for {granularity[1]}:{n}"
            if shape is not None and shape[in_axes[0]] % n:
                return (f"{shape[in_axes[0]]} input channels of {name!r} are not a multiple "
                        f"of {n}")
    if kind == "connection" and any(len(i) != 1 for _, i, _ in spec.values()):
        return "a depthwise kernel has no input→output connections"
    return None


def make_prunable(model, granularity="weight", layers=None, round_to=1, verbose=0):
    """An equivalent model whose prunable layers carry pruning masks (all ones: identical
    outputs), weights kept.

    Prunable: `Dense`, `EinsumDense`, `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`,
    `DepthwiseConv1D/2D`, `SeparableConv1D/2D` (both kernels) and keras_convx's
    `LogPolarConv2D`, `GroupLiftConv2D`, `GroupConv2D`, `SharedBasisConv2D` (its mixing
    coefficients). `SynapticConv2D` carries its own connection mask (`callbacks.Pruning`
    and `SynapticPruning` prune it). Layers inside nested Functional/Sequential models count.

    Args:
        model: a built Functional or Sequential model (not already prunable).
        granularity: `"weight"`, `"connection"`, `"channel"` or `"m:n"` for every layer, or a
            dict `{layer name: granularity}` (layers not in it get `"weight"`).
        layers: which layers to make prunable: names, classes or predicates (a list of them);
            default every prunable layer.
        round_to: int ≥ 1; with `"channel"`, the kept channel count is a multiple of it.
        verbose: 1 prints the layers left dense, with the reason (e.g. with `"channel"`, a
            layer whose channels reach a model output through activations, pooling, merges,
            depthwise convolutions or nested models: `keras_convx.graph.last_layers`).

    A layer that cannot take its granularity (e.g. 3 input channels for `"2:4"`, a model
    output layer for `"channel"`) is left dense when it was selected implicitly, and is a
    ValueError when `layers` or the granularity dict names it (`verbose=1` lists the layers
    left dense). Returns the new model.

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(8, 3, name="conv"),
    ...                           keras.layers.Flatten(), keras.layers.Dense(3, name="head")])
    >>> prunable = keras_convx.pruning.make_prunable(model, granularity="2:4")
    >>> [type(layer).__name__ for layer in prunable.layers]
    ['PrunableConv2D', 'Flatten', 'PrunableDense']
    >>> keras_convx.pruning.update_masks(prunable, 0.5)   # 2 of every 4 input weights
    {'conv': 0.5, 'head': 0.5, 'total': 0.5}
    """
    graph.graph_of(model)
    if not model.built:
        raise ValueError("make_prunable needs a built model (call it or give it a keras.Input).")
    round_to = arguments.integer("round_to", round_to)
    per_layer = granularity if isinstance(granularity, dict) else None
    default = parse_granularity("weight" if per_layer is not None else granularity)
    names = {layer.name for layer in graph.all_layers(model)}
    if per_layer is not None:
        unknown = sorted(set(per_layer) - names)
        if unknown:
            raise ValueError(f"granularity names layers the model does not have: {unknown}")
        per_layer = {k: parse_granularity(v) for k, v in per_layer.items()}
    items = _selector(layers)
    for item in items or ():
        if isinstance(item, str) and item not in names:
            raise ValueError(f"Expected layers to name layers of the model; it has no layer "
                             f"{item!r}.")
    if any(isinstance(layer, PrunableMixin) for layer in graph.all_layers(model)):
        raise ValueError("The model is already prunable (make_prunable was applied to it).")
    # the layers whose channels are the model's outputs (through activations, pooling, ...)
    output_layers = {layer.name for layer in graph.last_layers(
        model, is_prunable, through=_depthwise_only)}
    plan, left = {}, {}
    for layer in graph.all_layers(model):
        selected, named = _selected(layer, items)
        if not selected:
            continue
        named = named or layer.name in (per_layer or {})  # a granularity given by name
        wanted = (per_layer or {}).get(layer.name, default)
        reason = _why_not(layer, wanted, output_layers)
        if reason is None:
            plan[id(layer)] = wanted
        elif named:
            raise ValueError(f"Layer {layer.name!r} cannot be pruned with granularity "
                             f"{_label(wanted)!r}: {reason}.")
        elif prunable_weights(layer) is not None:
            left[layer.name] = reason
    if verbose and left:
        for name, reason in left.items():
            print(f"make_prunable: {name} left dense: {reason}")

    def replace(layer):
        if id(layer) not in plan:
            return None
        twin = TWINS[type(layer)]
        new = twin.from_config(dict(layer.get_config(), granularity=_label(plan[id(layer)]),
                                    round_to=round_to))
        weights = layer.get_weights()

        def setter(n):
            for variable, value in zip(n.unmasked_weights(), weights):
                variable.assign(value)

        return new, setter

    return graph.rewrite(model, replace)


def _label(granularity):
    return granularity[0] if granularity[0] != "m:n" else f"{granularity[1]}:{granularity[2]}"


def masked_layers(model):
    """The layers of `model` that carry pruning masks (`make_prunable`'s twins), in order."""
    return [layer for layer in graph.all_layers(model) if isinstance(layer, PrunableMixin)]
