"""The model graph: walk a Functional/Sequential model's layer calls, rewrite or replace
layers keeping their weights.

The shared middle floor of keras_convx (see ARCHITECTURE.md): `pruning` (strip, compact,
make_synaptic), `export` (fold) and `analysis` (Grad-CAM's path to the features) use it;
it imports no module above the layers.

Keras' private graph attributes are read through `keras_convx.keras_compat`.

Example:

>>> from keras_convx import graph
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
...                           keras.layers.Flatten(name="flat")])
>>> for node in graph.layer_nodes(graph.graph_of(model)):
...     print(node.operation.name)
conv
flat
>>> copy = graph.rewrite(model, lambda layer: None)   # a copy with the same weights
>>> [layer.name for layer in copy.layers]
['conv', 'flat']
"""

import inspect

import keras

from keras_convx import arguments
from keras_convx import keras_compat

__all__ = ["accepts_training", "all_layers", "graph_of", "last_layers", "layer_nodes",
           "plain_conv_config", "producer", "rewrite"]


def graph_of(model):
    """The Functional graph behind a Functional or built Sequential model; ValueError for
    anything else (subclassed models have no graph to rewrite)."""
    if isinstance(model, keras.Sequential):
        functional = keras_compat.sequential_graph(model)
        if functional is None:
            raise ValueError(
                "Expected a built Sequential model (with a keras.Input); this one has no graph "
                "yet."
            )
        return functional
    if not keras_compat.is_graph_model(model):
        raise ValueError(
            "Expected a Functional or Sequential keras.Model; received "
            f"{type(model).__name__}. Subclassed models have no graph to rewrite."
        )
    return model


def layer_nodes(functional):
    """The layer-call nodes of a Functional graph in topological order (inputs excluded)."""
    by_depth = keras_compat.nodes_by_depth(functional)
    return [
        node
        for depth in sorted(by_depth, reverse=True)
        for node in by_depth[depth]
        if node.operation is not None and not node.is_input
    ]


def producer(tensor):
    """`(operation, node)` that made a symbolic tensor of a Functional graph."""
    return keras_compat.producer(tensor)


def all_layers(model):
    """Every layer of `model`, nested models' layers included, in model order (not the model)."""
    return keras_compat.flatten_layers(model)


def last_layers(model, stop, through=None):
    """The layers `stop(layer)` is true for whose output reaches a model output through no
    other such layer: the model's outputs followed back through every other layer
    (activations, pooling, normalisation, reshapes, merges: all their inputs) and into nested
    Functional or Sequential models (a nested model's input continues with the tensor it was
    called on). A nested model without a graph is followed through to its inputs. A stop
    layer for which `through(layer)` is true (e.g. a depthwise convolution, which keeps
    channels apart) is reported and followed through as well.

    Example:

    >>> inputs = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    >>> h = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(h))
    >>> model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(h))
    >>> [layer.name for layer in keras_convx.graph.last_layers(
    ...     model, lambda layer: isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))]
    ['logits']
    """
    found, seen, contexts = [], set(), [None]  # contexts live on: their ids stay unique
    stack = [(tensor, None) for tensor in keras.tree.flatten(graph_of(model).outputs)]
    while stack:
        tensor, outer = stack.pop()
        layer, node = producer(tensor)
        if (id(node), id(outer)) in seen:
            continue
        seen.add((id(node), id(outer)))
        called_on = keras.tree.flatten(node.input_tensors)
        if stop(layer):
            if not any(layer is other for other in found):
                found.append(layer)
            if through is not None and through(layer):
                stack.extend((t, outer) for t in called_on)
            continue
        if isinstance(layer, keras.layers.InputLayer):
            if outer is not None:  # a nested model's input: the tensor it was called on
                inputs, called, parent = outer
                stack.extend((t, parent) for i, t in zip(inputs, called) if i is tensor)
            continue
        if isinstance(layer, keras.Model):
            try:
                inner = graph_of(layer)
            except ValueError:  # no graph to follow: through to its inputs
                stack.extend((t, outer) for t in called_on)
                continue
            context = (keras.tree.flatten(inner.inputs), called_on, outer)
            contexts.append(context)
            stack.extend((t, context) for t in keras.tree.flatten(inner.outputs))
            continue
        stack.extend((t, outer) for t in called_on)
    return found


def data_formats(model):
    """The distinct `data_format`s of `model`'s layers that have one, sorted (a model may mix
    them, e.g. behind a `Permute`)."""
    return tuple(sorted({layer.data_format for layer in all_layers(model)
                         if getattr(layer, "data_format", None) in arguments.DATA_FORMATS}))


def accepts_training(layer):
    """True when `layer.call` takes a `training` argument."""
    return "training" in inspect.signature(layer.call).parameters


def rewrite(model, replace):
    """`keras.models.clone_model` where `replace(layer)` returns either None (a copy of the
    layer with its weights) or `(new_layer, set_weights(new_layer))`.

    Args:
        model: a Functional or built Sequential model.
        replace: `layer -> None | (new_layer, setter)`; `setter(new_layer)` runs once the new
            model is built (to set its weights).

    Returns:
        The new model (same inputs and outputs structure).
    """
    graph_of(model)
    cache, post = {}, []

    def clone(layer):
        key = id(layer)
        if key not in cache:
            new, setter = replace(layer) or (
                layer.__class__.from_config(layer.get_config()),
                lambda n, old=layer: n.set_weights(old.get_weights()),
            )
            post.append((new, setter))
            cache[key] = new
        return cache[key]

    # recursive: a nested Functional or Sequential model is rebuilt with its layers replaced
    # too (otherwise clone_model copies it whole and its layers are silently skipped).
    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for new, setter in post:
        setter(new)
    # clone_model rebuilds a nested model without its own `trainable` flag (its layers keep
    # theirs): restore it, nested models pairing up in model order.
    nested = [[layer for layer in all_layers(m) if isinstance(layer, keras.Model)]
              for m in (model, new_model)]
    if len(nested[0]) == len(nested[1]):
        for old, new in zip(*nested):
            if new.trainable != old.trainable:
                new.trainable = old.trainable
    return new_model


def plain_conv_config(layer, filters=None, use_bias=None, kernel_size=None, padding=None,
                      groups=None, name=None):
    """The `keras.layers.Conv2D` config with `layer`'s geometry, activation, dtype policy and
    trainability (a SynapticConv2D, a Conv2D, or any keras_convx convolution); the keywords
    override what differs. Used by `pruning.strip`/`compact` and `export.fold`."""
    activation = getattr(layer, "activation", None)
    return {
        "name": name or layer.name,
        "filters": layer.filters if filters is None else filters,
        "kernel_size": tuple(layer.kernel_size if kernel_size is None else kernel_size),
        "strides": tuple(layer.strides),
        "padding": padding or layer.padding,
        "data_format": layer.data_format,
        "dilation_rate": tuple(getattr(layer, "dilation_rate", (1, 1))),
        "groups": getattr(layer, "groups", 1) if groups is None else groups,
        "activation": None if activation is None else keras.activations.serialize(activation),
        "use_bias": layer.use_bias if use_bias is None else use_bias,
        "dtype": layer.dtype_policy,
        "trainable": layer.trainable,
    }
