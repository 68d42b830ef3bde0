"""Every use of Keras' private API in keras_convx, in one small module.

Keras 3.15 has no public API for what these functions read. Each says what it reads and why
keras_convx needs it, so a Keras upgrade that moves one breaks here, in one file (the other
modules call these functions; tests/test_architecture.py refuses private Keras names
elsewhere). A leaf module: it imports nothing of keras_convx, so every floor may use it.
"""

import keras


def sequential_graph(model):
    """The Functional graph a built `keras.Sequential` runs, or None before it is built.

    Reads `Sequential._functional`: pruning, export and analysis rewrite and walk a
    Sequential model through the same graph as a Functional one."""
    return getattr(model, "_functional", None)


def is_graph_model(model):
    """True for a model with a layer graph (Functional), False for a subclassed model.

    Reads whether `_nodes_by_depth` exists: `keras.Model` is also the class of subclassed
    models, and only a graph model can be walked or rewritten."""
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def nodes_by_depth(functional):
    """{depth: [Node]} of a Functional graph (depth 0 = the outputs).

    Reads `Functional._nodes_by_depth`: the topological order Keras itself runs the graph in
    (the public `model.layers` loses the call order of shared layers)."""
    return functional._nodes_by_depth


def producer(tensor):
    """`(operation, node)` that made a symbolic tensor of a Functional graph.

    Reads `KerasTensor._keras_history` and `Operation._inbound_nodes`: the node that made a
    tensor, to follow the graph back from an output (Grad-CAM's path to the features)."""
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def flatten_layers(model):
    """Every layer of `model`, nested models' layers included, in model order (not the model).

    Reads `Layer._flatten_layers`: `model.layers` lists a nested model, not its layers."""
    return list(model._flatten_layers(include_self=False))


def compile_loss(model):
    """The loss `model.compile(loss=...)` set (Keras' `CompileLoss`), or None.

    Reads `Trainer._compile_loss`: `PairwiseConsistency` applies the user's compiled loss to
    a second (erased) view of the batch, with the same reduction and sample weights."""
    return getattr(model, "_compile_loss", None)


def sharing_scope_map():
    """The object map of Keras' saving/loading `ObjectSharingScope`, or None outside one.

    Reads `keras.src.backend.common.global_state` ("shared_objects/id_to_obj_map"): a
    `FilterBasis` shared by several layers is restored as ONE object per load, matched by its
    own key (Keras marks only some users' copies as shared)."""
    try:
        from keras.src.backend.common import global_state  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a Keras without the scope
        return None
    return global_state.get_global_attribute("shared_objects/id_to_obj_map")


def optimizer_slots(optimizer, variable):
    """The optimizer's slot variables for `variable` (momentum, Adam's moments, ...).

    Reads the naming of `BaseOptimizer.add_variable_from_reference` (the slot's name is the
    variable's path with "/" → "_", then "_<slot>"): Keras has no public map from a variable
    to its slots, and pruning zeroes a pruned weight's slots so it stays exactly zero."""
    prefix = variable.path.replace("/", "_") + "_"
    return [slot for slot in optimizer.variables
            if slot.name.startswith(prefix) and tuple(slot.shape) == tuple(variable.shape)]
