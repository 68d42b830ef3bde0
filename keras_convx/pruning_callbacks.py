"""The pruning callbacks, `Pruning` and `SynapticPruning` (exported by
`keras_convx.callbacks`): the masks of a model set on a schedule during `fit`."""

import keras

from keras_convx import arguments
from keras_convx import fit_steps
from keras_convx import pruning

__all__ = ["Pruning", "SynapticPruning"]


class _ScheduledPruning(keras.callbacks.Callback):
    """The schedule loop both pruning callbacks share: at each optimizer step `t` where
    `schedule(t)` says so (before that step runs) `_update(target)` sets the masks; the
    step is the optimizer's own (`keras_convx.fit_steps.FitSteps`: its `iterations` read at
    every epoch's start, so a restored run continues exactly); per-layer sparsity goes into
    the epoch logs. With `steps_per_execution` > 1 the masks can change only between
    executions: an execution whose steps include due ones starts with the target of its
    last due step."""

    name = "Pruning"

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = pruning.get_schedule(schedule)
        self.verbose = arguments.integer("verbose", verbose, minimum=0)
        self.updates = []
        self.steps = fit_steps.FitSteps(self)

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        due = [t for t in self.steps.execution(batch) if self.schedule.should_prune(t)]
        if not due:
            return
        if keras.backend.backend() == "jax" and hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # read current weights; the trainer re-reads ours
        target = self.schedule.sparsity_at(due[-1])
        total = self._update(target)
        self.updates.append((due[-1], target, total))
        if self.verbose:
            # On its own line, as Keras' callbacks print (not into the progress bar's line).
            print(f"\n{self.name}: step {due[-1]}: target {target:.3f}, sparsity {total:.3f}",
                  flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, value in self._report().items():
            logs["sparsity" if name == "total" else f"sparsity/{name}"] = value


class Pruning(_ScheduledPruning):
    """Prunes a model's masks on a schedule during `fit`: tfmot's `prune_low_magnitude` +
    `UpdatePruningStep` in one callback, for any Keras 3 model on every backend.

    What it prunes: the layers of a `keras_convx.pruning.make_prunable` model (their
    granularity's units: entries, connections, channels or m of every n) and the connections
    of every `SynapticConv2D` (so use it OR `SynapticPruning` on a model, not both: each
    would set the synaptic masks). At each step the schedule names (before that step runs), each
    layer's masks are set so `schedule.sparsity_at(t)` of its units are pruned (with
    `keras_convx.pruning.update_masks`, and `keras_convx.pruning.prune` for the synaptic
    layers); the pruned weights and their optimizer slots are set to exactly zero and pruned
    units stay pruned. Between updates the callback reads nothing (on JAX an update forces one
    state sync, so the schedule's `frequency` bounds that cost); the masks act inside the
    compiled train step. The step is the optimizer's `iterations`, read at every epoch's
    start (`keras_convx.fit_steps.FitSteps`), so a run restored by
    `keras.callbacks.BackupAndRestore` or from a `.keras` checkpoint
    continues the schedule exactly.

    Logs: `sparsity` and `sparsity/<layer>` in the epoch logs, so in `History`, and in
    TensorBoard (`epoch_sparsity/<layer>` scalars, tfmot's `PruningSummaries`) when a
    `keras.callbacks.TensorBoard` comes AFTER this callback in the list (Keras hands the
    callbacks one logs dict, in list order). `self.updates` lists `(step, target sparsity,
    achieved total sparsity)`.

    Args:
        schedule: a `keras_convx.pruning.PruningSchedule` (`ConstantSparsity`,
            `PolynomialDecay`) or its serialized dict.
        criterion: `"magnitude"` (default: |w| summed over each unit; for a
            `SynapticConv2D` the L1 norm of a connection's effective kernel, `"kernel_l1"`),
            `"strength"` (the synaptic strength |m·s| of `SynapticConv2D` connections, the
            paper's; the model must have them and no `make_prunable` layer, which has no
            strength), `"kernel_l1"`, or a callable: `criterion(layer, attribute, values)`
            for `make_prunable` layers (see `update_masks`), `criterion(layer)` for
            `SynapticConv2D` (see `keras_convx.pruning.importance`).
        scope: `"layer"` (default: each layer to the target, tfmot's) or `"global"` (one
            ranking over the layers' units; `make_prunable` layers and `SynapticConv2D`
            connections are ranked apart, their scores being of different kinds).
        normalization: None (default), `"channel"` or `"layer"`: scores divided by their
            output channel's L2 norm / the layer's root mean square before ranking (matters
            with `scope="global"`, or within a layer for "channel").
        verbose: 0 or 1 (print each update).

    Raises:
        ValueError: for a bad argument when constructed; at the start of training if the
            model has nothing this criterion can prune.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> prunable = keras_convx.pruning.make_prunable(model, granularity="channel")
    >>> prunable.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(16, 8, 8, 1), np.random.randint(0, 3, 16)
    >>> schedule = keras_convx.pruning.PolynomialDecay(0.0, 0.5, 0, 4, frequency=1)
    >>> history = prunable.fit(x, y, batch_size=4, epochs=2, verbose=0,
    ...                        callbacks=[keras_convx.callbacks.Pruning(schedule)])
    >>> keras_convx.pruning.sparsity(prunable)      # the conv's channels; the output layer stays
    {'conv': 0.5, 'total': 0.5}
    """

    name = "Pruning"
    CRITERIA = ("magnitude", "strength", "kernel_l1")
    masked = True  # prunes make_prunable layers (SynapticPruning: only SynapticConv2D)

    def __init__(self, schedule, criterion="magnitude", scope="layer", normalization=None,
                 verbose=0):
        super().__init__(schedule, verbose)
        if not callable(criterion):
            criterion = arguments.choice("criterion", criterion, self.CRITERIA)
        self.criterion = criterion
        self.scope = arguments.choice("scope", scope, pruning.SCOPES)
        self.normalization = pruning.check_normalization(normalization)
        self._masked, self._synaptic = [], []

    def on_train_begin(self, logs=None):
        self._masked = pruning.masked_layers(self.model) if self.masked else []
        self._synaptic = pruning.prunable_layers(self.model)
        if self.criterion in ("strength", "kernel_l1") and not self._synaptic:
            raise ValueError(
                f"{self.name}: criterion={self.criterion!r} scores the connections of "
                "keras_convx.layers.SynapticConv2D; this model has none (convert its Conv2D "
                "layers with keras_convx.pruning.make_synaptic(model), or make it prunable "
                "with keras_convx.pruning.make_prunable and use criterion='magnitude').")
        masked = [layer.name for layer in self._masked]
        if self.criterion in ("strength", "kernel_l1") and self._masked:
            raise ValueError(
                f"{self.name}: criterion={self.criterion!r} scores SynapticConv2D "
                f"connections; the make_prunable layers {masked} have none. Use "
                "criterion='magnitude' or a callable.")
        if callable(self.criterion) and self._masked and self._synaptic:
            raise ValueError(
                f"{self.name}: a callable criterion scores one kind of layer (it is called "
                "as criterion(layer, attribute, values) for make_prunable layers and "
                "criterion(layer) for SynapticConv2D); this model has both "
                f"({masked} and {[layer.name for layer in self._synaptic]}). Use "
                "criterion='magnitude'.")
        pruning.check_normalization(self.normalization, self._masked)
        if not (self._masked or self._synaptic):
            raise ValueError(
                f"{self.name} expects a model from keras_convx.pruning.make_prunable or one "
                "with keras_convx.layers.SynapticConv2D layers; this one has no prunable "
                "layer.")
        super().on_train_begin(logs)

    def _update(self, target):
        if self._masked:
            pruning.update_masks(self.model, target, self.criterion, self._masked, self.scope,
                                 self.normalization)
        if self._synaptic:
            criterion = "kernel_l1" if self.criterion == "magnitude" else self.criterion
            pruning.prune(self.model, target, self.scope, criterion, self._synaptic,
                          self.normalization)
        return self._report()["total"]

    def _report(self):
        return pruning.sparsity(self.model)


class SynapticPruning(Pruning):
    """Prunes the connections of every `SynapticConv2D` on a schedule during `fit`: the
    paper's scheme, `Pruning` with the synaptic-strength criterion and one global ranking.

    At each optimizer step `t` where `schedule(t)` says so (before that step runs), the masks
    are recomputed with `keras_convx.pruning.prune(model, schedule.sparsity_at(t), scope,
    criterion)`: the least important connections (synaptic strength |m·s| by default) are
    masked; pruned connections stay pruned. Layers made prunable by `make_prunable` are left
    to `Pruning`. Everything else (the resumable step, the logs, TensorBoard, `updates`) is as
    in `Pruning`.

    Args:
        schedule: a `keras_convx.pruning.PruningSchedule` (`ConstantSparsity`,
            `PolynomialDecay`) or its serialized dict.
        scope: `"global"` (one threshold over all layers, default) or `"layer"`.
        criterion: `"strength"` (default), `"kernel_l1"`, `"magnitude"` (= `"kernel_l1"`) or
            a callable (see `keras_convx.pruning.importance`).
        normalization: None (default), `"channel"` or `"layer"` (see
            `keras_convx.pruning.prune`).
        verbose: 0 or 1 (print each update).

    Raises:
        ValueError: at the start of training if the model has no `SynapticConv2D`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 4)), keras_convx.layers.SynapticConv2D(8, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(16, 8, 8, 4), np.random.randint(0, 3, 16)
    >>> schedule = keras_convx.pruning.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=4,
    ...                                                frequency=1)
    >>> history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
    ...                     callbacks=[keras_convx.callbacks.SynapticPruning(schedule)])
    >>> keras_convx.pruning.sparsity(model)      # of the 4 × 8 connections
    {'conv': 0.75, 'total': 0.75}
    """

    name = "SynapticPruning"
    masked = False

    def __init__(self, schedule, scope="global", criterion="strength", normalization=None,
                 verbose=0):
        super().__init__(schedule, criterion, scope, normalization, verbose)

    def on_train_begin(self, logs=None):
        if not pruning.prunable_layers(self.model):
            raise ValueError(
                "SynapticPruning expects a model with at least one "
                "keras_convx.layers.SynapticConv2D; this model has none (convert its Conv2D "
                "layers with keras_convx.pruning.make_synaptic(model)).")
        super().on_train_begin(logs)
