"""The callbacks count optimizer steps, not hook calls (`keras_convx.fit_steps.FitSteps`).

With `model.compile(steps_per_execution=n)` Keras calls a callback's batch hooks once per
execution of n steps (jax, tensorflow; torch accepts only 1), an epoch's last execution runs
the steps left over, and the hooks' step index restarts every epoch. Every keras_convx
callback that acts on steps (`Pruning`, `SynapticPruning` share one loop; `GradientFlow`)
must agree with the optimizer's `iterations`, also in a resumed run. Before `FitSteps`,
Pruning counted 18 steps where the optimizer ran 14 and GradientFlow recorded hook calls.
"""

import os
import tempfile

import keras
import numpy as np
import pytest

import keras_convx
from keras_convx import callbacks
from keras_convx import pruning
from tests import harness

BATCHES = 7  # per epoch: 14 samples in batches of 2
EPOCHS = 2
DUE = range(0, 13, 2)  # PolynomialDecay(begin_step=0, end_step=12, frequency=2)


def _spe_values():
    return (1, 3) if keras.backend.backend() != "torch" else (1,)


def _assert_torch_refuses(model, x, y):
    """Keras' torch trainer refuses steps_per_execution > 1 (checked, not assumed: a Keras
    that lifts the limit makes this fail, and the test must then run on torch too)."""
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)


def _executions(spe, epochs=EPOCHS, first_epoch=0):
    """[(first step, stop)] of every execution, written from Keras' documented loop."""
    out = []
    for epoch in range(first_epoch, epochs):
        for begin in range(0, BATCHES, spe):
            out.append((epoch * BATCHES + begin, epoch * BATCHES + min(begin + spe, BATCHES)))
    return out


def _expected_updates(executions):
    """The step of each mask update: one before every execution holding due steps, with the
    target of its last one."""
    return [max(t for t in DUE if lo <= t < hi)
            for lo, hi in executions if any(lo <= t < hi for t in DUE)]


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(), keras.layers.Dense(3, name="head")])
    return pruning.make_prunable(model)


def _data():
    rng = np.random.default_rng(0)
    return rng.random((2 * BATCHES, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 2 * BATCHES)


def _compile(model, spe, run_eagerly=False):
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=spe, run_eagerly=run_eagerly)
    return model


def _schedule():
    return pruning.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=12, frequency=2)


class _Ends(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps, self.ends = keras_convx.fit_steps.FitSteps(self), []

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(self.steps.execution_end(batch))


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("spe", [1, 3])
def test_callback_steps_are_the_optimizers(spe, run_eagerly):
    x, y = _data()
    model = _compile(_model(), spe, run_eagerly)
    if spe not in _spe_values():
        _assert_torch_refuses(model, x, y)
        return
    prune = callbacks.Pruning(_schedule())
    flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=2)
    ends = _Ends()
    model.fit(x, y, batch_size=2, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[prune, flow, ends])
    assert int(harness.to_numpy(model.optimizer.iterations)) == EPOCHS * BATCHES
    executions = _executions(spe)
    assert ends.ends == [stop for _, stop in executions]
    expected = _expected_updates(executions)
    assert [step for step, _, _ in prune.updates] == expected
    assert [target for _, target, _ in prune.updates] == pytest.approx(
        [_schedule().sparsity_at(step) for step in expected])
    # a measurement after each execution reaching a multiple of 2, and at each epoch's end
    measured = {hi for lo, hi in executions if hi // 2 > lo // 2}
    measured |= {BATCHES * (epoch + 1) for epoch in range(EPOCHS)}
    assert sorted(flow.series()) == sorted(measured)
    assert len(flow.records) == len(measured) * 2  # conv, head: no step measured twice


@pytest.mark.parametrize("spe", [1, 3])
def test_resumed_run_continues_the_schedule_under_steps_per_execution(spe):
    """Interrupted when epoch 1 begins (step 7, between the updates at 6 and 8) and resumed
    by `keras.callbacks.BackupAndRestore`: the resumed run's updates are the uninterrupted
    run's from step 7 on, and its masks end equal."""
    x, y = _data()
    if spe not in _spe_values():
        _assert_torch_refuses(_compile(_model(), spe), x, y)
        return
    fit_kwargs = dict(batch_size=2, epochs=EPOCHS, shuffle=False, verbose=0)
    full = _compile(_model(), spe)
    full_cb = callbacks.Pruning(_schedule())
    full.fit(x, y, callbacks=[full_cb], **fit_kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        backup = os.path.join(tmp, "backup")
        first = _compile(_model(), spe)
        with pytest.raises(RuntimeError, match="interrupted"):
            first.fit(x, y, callbacks=[callbacks.Pruning(_schedule()),
                                       keras.callbacks.BackupAndRestore(backup),
                                       harness.InterruptAtEpoch(1)], **fit_kwargs)
        resumed = _compile(_model(seed=1), spe)
        cb = callbacks.Pruning(_schedule())
        resumed.fit(x, y, callbacks=[cb, keras.callbacks.BackupAndRestore(backup)],
                    **fit_kwargs)
    assert [u[0] for u in cb.updates] == [u[0] for u in full_cb.updates if u[0] >= BATCHES]
    assert [u[0] for u in cb.updates] == _expected_updates(_executions(spe, first_epoch=1))
    layers = list(zip(pruning.masked_layers(full), pruning.masked_layers(resumed)))
    assert [a.name for a, _ in layers] == ["conv", "head"]
    for a, b in layers:
        for name, mask in a.pruning_masks.items():
            np.testing.assert_array_equal(harness.to_numpy(mask),
                                          harness.to_numpy(b.pruning_masks[name]))
    assert pruning.sparsity(resumed) == pytest.approx(pruning.sparsity(full))


def _count_real_syncs(model):
    """Wraps `model.jax_state_sync` to count the calls that copy the training state back (a
    call when the state is already attached returns at once)."""
    calls = []
    sync = model.jax_state_sync

    def counted():
        calls.append(getattr(model, "_jax_state", None) and not model._jax_state_synced)
        sync()

    model.jax_state_sync = counted
    return calls


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="only jax keeps the state apart")
@pytest.mark.parametrize("spe", [1, 3])
def test_callbacks_sync_jax_state_only_to_act(spe):
    """On jax, a callback's `model` property copies the whole training state back into the
    variables (and the next step reloads it). Between their actions the callbacks must not
    touch it: the real syncs of a `fit` with them are the plain `fit`'s (one per epoch) plus
    one per mask update made inside an epoch (not before its first execution)."""
    x, y = _data()
    fit_kwargs = dict(batch_size=2, epochs=EPOCHS, shuffle=False, verbose=0)
    plain = _compile(_model(), spe)
    plain_calls = _count_real_syncs(plain)
    plain.fit(x, y, **fit_kwargs)
    model = _compile(_model(), spe)
    calls = _count_real_syncs(model)
    prune = callbacks.Pruning(_schedule())
    flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=100)  # epoch ends only
    model.fit(x, y, callbacks=[prune, flow, _Ends()], **fit_kwargs)
    mid_epoch = [step for step, _, _ in prune.updates if step % BATCHES >= spe]
    assert mid_epoch  # the schedule acts inside epochs
    assert sum(map(bool, calls)) == sum(map(bool, plain_calls)) + len(mid_epoch)


def test_fit_steps_needs_its_epoch_anchor():
    """The batch hooks' indices restart every epoch: FitSteps used without `epoch_begin`
    (from `on_epoch_begin`) is an error, not a count that drifts."""
    class Unanchored(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = keras_convx.fit_steps.FitSteps(self)

        def on_train_batch_end(self, batch, logs=None):
            self.steps.execution_end(batch)

    x, y = _data()
    with pytest.raises(RuntimeError, match="epoch_begin"):
        _compile(_model(), 1).fit(x, y, batch_size=2, epochs=1, verbose=0,
                                  callbacks=[Unanchored()])
