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


def batch_normalization_with_moments(moments, **kwargs):
    """A `keras.layers.BatchNormalization(**kwargs)` whose batch moments (unmasked) come
    from `moments(inputs, axes)`, e.g. moments all-reduced over `torch.distributed`
    processes where Keras accepts `synchronized=True` on TensorFlow only.

    Overrides `BatchNormalization._moments(inputs, mask)` (Keras 3's hook for the batch
    statistics); the layer's variables, config and saved form are Keras' own."""

    class _Moments(keras.layers.BatchNormalization):
        def _moments(self, inputs, mask):
            if mask is not None:
                return super()._moments(inputs, mask)
            rank = len(inputs.shape)
            axes = [a for a in range(rank) if a != self.axis % rank]
            return moments(inputs, axes)

    return _Moments(**kwargs)


def train_step_loss(model, x, y, y_pred, sample_weight):
    """The loss of one training step, as Keras' own `train_step` computes and tracks it.

    Calls `Trainer._compute_loss` (which passes `training=True` to a `compute_loss` that
    takes it) and updates `Trainer._loss_tracker` with the batch size as weight: a train step
    written for `DistributedDataParallel` reports the same "loss" as Keras' own."""
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=True)
    first = next(t for t in keras.tree.flatten(x) if t is not None)
    model._loss_tracker.update_state(loss, sample_weight=first.shape[0])
    return loss


def jax_initialize_rng():
    """Keras' `initialize_rng` for multi-process JAX (what `keras.distribution.initialize`
    does after `jax.distributed.initialize`): one random seed for every process when none
    was set, so that every process initialises the same weights."""
    from keras.src.backend.jax import distribution_lib  # noqa: PLC0415

    distribution_lib.initialize_rng()


def fix_tensorflow_multi_worker(is_distributed_value):
    """Make `model.fit` run under `tf.distribute.MultiWorkerMirroredStrategy` (Keras 3.15,
    keras-team/keras#20585). Idempotent; changes nothing for other strategies.

    Two places of `keras.src.backend.tensorflow.trainer` pass a structure Keras'
    multi-worker path cannot take: `TensorFlowTrainer._maybe_symbolic_build` reduces the
    whole `(x, y)` batch at once (the collective strategy reduces one value at a time: here
    each leaf is reduced), and `reduce_per_replica` reduces the step's scalar logs with
    `axis=0` (here `axis=None`, the mean over replicas). `is_distributed_value(v)`: whether
    `v` is a `tf.distribute.DistributedValues` (the caller imports TensorFlow)."""
    from keras.src import tree  # noqa: PLC0415
    from keras.src.backend.tensorflow import trainer  # noqa: PLC0415

    if getattr(trainer, "_keras_convx_multi_worker", False):
        return
    reduce_per_replica = trainer.reduce_per_replica
    symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def is_multi_worker(strategy):
        return trainer._collective_all_reduce_multi_worker(strategy)

    def fixed_reduce(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def fixed_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not is_multi_worker(strategy):
            return symbolic_build(self, iterator=iterator, data_batch=data_batch)
        batch = data_batch
        for _, _, it in iterator:
            batch = tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if is_distributed_value(v) else v, next(it))
            break
        return symbolic_build(self, data_batch=batch)

    trainer.reduce_per_replica = fixed_reduce
    trainer.TensorFlowTrainer._maybe_symbolic_build = fixed_build
    trainer._keras_convx_multi_worker = True
