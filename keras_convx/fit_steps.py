"""The optimizer step a callback is at during `fit`, exact under `steps_per_execution`.

Keras calls a callback's `on_train_batch_begin(begin_step)` and `on_train_batch_end(end_step)`
once per execution of the compiled train step, not once per optimizer step: with
`model.compile(steps_per_execution=n)` (jax, tensorflow; torch needs 1) an execution runs n
steps, an epoch's last execution runs the steps that are left, and `begin_step` restarts at 0
every epoch (`end_step` is always `begin_step + n - 1`, even for a shorter last execution).
A callback that counts its hook calls therefore drifts from the optimizer. `FitSteps` counts
steps as the optimizer does.
"""

import keras

__all__ = ["FitSteps"]


class FitSteps:
    """Counts a `fit`'s optimizer steps from a callback's hooks.

    At every epoch's start it reads the optimizer's `iterations` (free there: Keras has
    synced the training state on every backend, and a `keras.callbacks.BackupAndRestore` or
    a loaded checkpoint has already restored it); within the epoch an execution's steps are
    `begin_step` onwards, `steps_per_execution` of them, cut at the epoch's number of steps.
    So the count is the optimizer's own at every hook, also after a resumed run. Where Keras
    does not know an epoch's number of steps (a dataset of unknown length), an epoch's last
    execution is counted as a whole one until the next epoch's start reads `iterations` again.

    Args:
        callback: the `keras.callbacks.Callback` whose model and `params` are read.

    Example:

    >>> class Steps(keras.callbacks.Callback):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.steps, self.seen = keras_convx.fit_steps.FitSteps(self), []
    ...     def on_epoch_begin(self, epoch, logs=None):
    ...         self.steps.epoch_begin()
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         self.seen.append(self.steps.execution_end(batch))
    >>> spe = 1 if keras.backend.backend() == "torch" else 3   # torch's trainer takes 1 only
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse", steps_per_execution=spe)
    >>> steps = Steps()
    >>> history = model.fit(np.ones((14, 3)), np.ones(14), batch_size=2, epochs=2,
    ...                     callbacks=[steps], verbose=0)
    >>> steps.seen[-1]    # the optimizer's 14 steps (7 per epoch), whatever the executions
    14
    >>> steps.seen == ([3, 6, 7, 10, 13, 14] if spe == 3 else list(range(1, 15)))
    True
    """

    def __init__(self, callback):
        self.callback = callback
        self.epoch_start = None
        self.per_execution = 1
        self.epoch_steps = None

    def optimizer_iterations(self):
        """The optimizer's `iterations`. Read it only where the state is synced: on jax,
        a callback's `model` property syncs the whole training state at every access."""
        return int(keras.ops.convert_to_numpy(self.callback.model.optimizer.iterations))

    def epoch_begin(self):
        """Call from `on_epoch_begin`: reads the step the epoch starts at, and the sizes the
        batch hooks need (so that they never touch the model)."""
        model = self.callback.model
        self.per_execution = max(int(getattr(model, "steps_per_execution", 1) or 1), 1)
        steps = (self.callback.params or {}).get("steps")
        self.epoch_steps = int(steps) if steps else None
        self.epoch_start = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        return self.epoch_start

    def execution(self, begin_step):
        """The optimizer steps (a `range`) the execution starting at `begin_step` runs."""
        if self.epoch_start is None:  # the batch indices restart every epoch: unanchored
            raise RuntimeError("FitSteps needs epoch_begin() called from the callback's "
                               "on_epoch_begin before its batch hooks use it.")
        stop = begin_step + self.per_execution
        if self.epoch_steps is not None:
            stop = min(stop, self.epoch_steps)
        return range(self.epoch_start + begin_step, self.epoch_start + max(stop, begin_step))

    def execution_end(self, end_step):
        """The optimizer's step count after the execution that ends at `end_step`."""
        return self.execution(end_step - self.per_execution + 1).stop
