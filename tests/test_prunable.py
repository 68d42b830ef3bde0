"""Pruning any Keras 3 model (keras_convx.prunable): make_prunable, the granularities, masks that
hold exactly under SGD-momentum and Adam, `.keras` round trips and bad input, on this backend.

The expected masks are computed here from the weights by the definitions (NumPy), not by the
code under test: "weight" keeps the largest |w|, "connection" whole (in, out) slices, "channel"
whole output channels, "m:n" m of every n consecutive entries along the input axis.
"""

import keras
import numpy as np
import pytest

from keras_convx import callbacks
from keras_convx import layers as kx
from keras_convx import prunable
from keras_convx import pruning
from keras_convx.ops.core import to_numpy
from tests import harness

BACKEND = keras.backend.backend()


def _model(data_format="channels_last", size=8):
    """Every prunable Keras and keras_convx layer type, tiny (`size=None`: any image size)."""
    shape = (size, size, 4) if data_format == "channels_last" else (4, size, size)
    x = keras.Input(shape)
    kw = dict(padding="same", data_format=data_format)
    y = keras.layers.Conv2D(8, 3, activation="relu", name="conv", **kw)(x)
    y = keras.layers.SeparableConv2D(8, 3, name="separable", **kw)(y)
    y = keras.layers.DepthwiseConv2D(3, name="depthwise", **kw)(y)
    y = keras.layers.Conv2DTranspose(8, 3, name="transpose", **kw)(y)
    y = kx.LogPolarConv2D(8, 5, rings=2, sectors=4, growth_rate=2.0, name="log_polar", **kw)(y)
    y = kx.GroupLiftConv2D(2, 3, group="p4", name="lift", **kw)(y)
    y = kx.GroupConv2D(2, 3, group="p4", name="group", **kw)(y)
    y = kx.SharedBasisConv2D(8, kx.FilterBasis(4, 3, data_format=data_format),
                             unique_bases=1, name="shared", **kw)(y)
    y = keras.layers.GlobalAveragePooling2D(data_format=data_format)(y)
    y = keras.layers.Dense(8, activation="relu", name="dense")(y)
    y = keras.layers.EinsumDense("ab,bc->ac", output_shape=8, name="einsum")(y)
    y = keras.layers.Dense(3, name="head")(y)
    return keras.Model(x, y)


def _x(data_format="channels_last", n=4, seed=0):
    shape = (n, 8, 8, 4) if data_format == "channels_last" else (n, 4, 8, 8)
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


PRUNED = {"conv", "separable", "depthwise", "transpose", "log_polar", "lift", "group", "shared",
          "dense", "einsum", "head"}


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_every_prunable_layer_converts_with_identical_outputs(data_format):
    model = _model(data_format)
    pruned = prunable.make_prunable(model)
    names = {layer.name for layer in prunable.masked_layers(pruned)}
    assert names == PRUNED
    for layer in prunable.masked_layers(pruned):
        assert type(layer).__name__ == "Prunable" + layer.pruned_class.__name__
        assert all(np.all(to_numpy(m) == 1) for m in layer.pruning_masks.values())
    x = _x(data_format)
    np.testing.assert_array_equal(pruned.predict(x, verbose=0), model.predict(x, verbose=0))


def _weights(layer):
    return {name: to_numpy(layer.pruned_variable(name)) for name in layer.pruning_masks}


def _masks(layer):
    return {name: to_numpy(m) for name, m in layer.pruning_masks.items()}


def test_weight_granularity_keeps_the_largest_magnitudes_per_layer():
    pruned = prunable.make_prunable(_model())
    before = {layer.name: _weights(layer) for layer in prunable.masked_layers(pruned)}
    report = pruning.update_masks(pruned, 0.75)
    for layer in prunable.masked_layers(pruned):
        values = np.concatenate([np.abs(v).reshape(-1) for v in before[layer.name].values()])
        masks = np.concatenate([m.reshape(-1) for m in _masks(layer).values()])
        # linked weights (log-polar kernel + centre) rank together, others alone
        keep = values.size - int(np.floor(0.75 * values.size + 1e-9))
        if layer.name not in ("log_polar", "separable"):
            assert int(masks.sum()) == keep, layer.name
            assert np.min(values[masks == 1]) >= np.max(values[masks == 0]), layer.name
        for name, mask in _masks(layer).items():  # pruned entries are exactly zero
            assert np.all(_weights(layer)[name][mask == 0] == 0), (layer.name, name)
        assert abs(report[layer.name] - 0.75) < 0.05, (layer.name, report[layer.name])


def test_connection_granularity_prunes_whole_slices():
    pruned = prunable.make_prunable(_model(), granularity="connection")
    pruning.update_masks(pruned, 0.5)
    lp = pruned.get_layer("log_polar")
    kernel, centre = _masks(lp)["kernel"], _masks(lp)["center_kernel"]
    slices = kernel.reshape(-1, *kernel.shape[2:])
    assert np.all(slices == slices[:1])  # every (c, o) slice all kept or all pruned
    np.testing.assert_array_equal(slices[0], centre)  # with its centre weight
    assert centre.mean() == 0.5
    conv = _masks(pruned.get_layer("conv"))["_kernel"]
    assert np.all(conv == conv[:1, :1]) and conv[0, 0].mean() == 0.5


def test_depthwise_layers_cannot_take_connections_and_are_listed(capsys):
    pruned = prunable.make_prunable(_model(), granularity="connection", verbose=1)
    names = {layer.name for layer in prunable.masked_layers(pruned)}
    assert names == PRUNED - {"depthwise", "separable"}
    assert "depthwise left dense" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'depthwise' cannot be pruned with granularity "
                                         "'connection'"):
        prunable.make_prunable(_model(), granularity="connection", layers=["depthwise"])


def test_channel_granularity_prunes_whole_output_channels_with_round_to():
    model = _model()
    pruned = prunable.make_prunable(model, granularity="channel", round_to=3)
    assert "head" not in {layer.name for layer in prunable.masked_layers(pruned)}
    pruning.update_masks(pruned, 0.5)
    conv = _masks(pruned.get_layer("conv"))["_kernel"]  # (3, 3, 4, 8)
    per_channel = conv.reshape(-1, 8)
    assert np.all(per_channel == per_channel[:1])
    assert int(per_channel[0].sum()) == 6  # 4 kept, rounded up to a multiple of 3
    conv = pruned.get_layer("conv")  # the bias goes with its channel (a removable channel)
    np.testing.assert_array_equal(_masks(conv)["bias"], per_channel[0])
    assert np.all(to_numpy(conv.pruned_variable("bias"))[per_channel[0] == 0] == 0)
    lift = _masks(pruned.get_layer("lift"))["kernel"]  # 2 fields: 1 kept → 3 → capped at 2
    assert np.all(lift == 1)
    transpose = _masks(pruned.get_layer("transpose"))["kernel"]  # (3, 3, out 8, in 8)
    assert np.all(transpose == transpose[:, :, :, :1])
    with pytest.raises(ValueError, match="'head' cannot be pruned with granularity 'channel'"):
        prunable.make_prunable(model, granularity="channel", layers=["head"])
    with pytest.raises(ValueError, match="'head' cannot be pruned"):  # named in the dict
        prunable.make_prunable(model, granularity={"head": "channel"})


def _heads():
    """Models whose last prunable layer ("last") does not make the output itself: its
    channels still are the model's outputs."""
    def body():
        inputs = keras.Input((8, 8, 3))
        return inputs, keras.layers.Conv2D(6, 3, name="conv")(inputs)

    def softmax_float32():  # Keras' mixed-precision head
        inputs, h = body()
        h = keras.layers.Dense(4, name="last")(keras.layers.GlobalAveragePooling2D()(h))
        return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(h))

    def conv_then_pool():  # all-convolutional classifier
        inputs, h = body()
        h = keras.layers.Conv2D(4, 1, name="last")(h)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))

    def dropout_softmax():
        inputs, h = body()
        h = keras.layers.Dense(4, name="last")(keras.layers.Flatten()(h))
        return keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dropout(0.1)(h)))

    def nested_head():
        inputs, h = body()
        head = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="last"),
                                 keras.layers.ReLU()], name="head_model")
        return keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(h)))

    def two_heads_concatenated():
        inputs, h = body()
        h = keras.layers.GlobalAveragePooling2D()(h)
        a = keras.layers.Dense(2, name="last")(h)
        b = keras.layers.Dense(2, name="other")(h)
        return keras.Model(inputs, keras.layers.Concatenate()([a, b]))

    def depthwise_then_pool():  # a depthwise conv keeps channels apart: both stay dense
        inputs, h = body()
        h = keras.layers.Conv2D(4, 1, name="last")(keras.layers.Conv2D(5, 1, name="pruned")(h))
        h = keras.layers.DepthwiseConv2D(3, name="other")(h)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))

    def shared_pooling_model():  # one nested model (no prunable layer) on two branches
        inputs, h = body()
        pool = keras.Sequential([keras.Input((None, None, 3)),
                                 keras.layers.GlobalAveragePooling2D()], name="pool_model")
        a = pool(keras.layers.Conv2D(3, 1, name="last")(h))
        b = pool(keras.layers.Conv2D(3, 1, name="other")(h))
        return keras.Model(inputs, keras.layers.Concatenate()([a, b]))

    return {f.__name__: f for f in (softmax_float32, conv_then_pool, dropout_softmax,
                                    nested_head, two_heads_concatenated, depthwise_then_pool,
                                    shared_pooling_model)}


@pytest.mark.parametrize("head", sorted(_heads()))
def test_channel_granularity_never_prunes_what_reaches_an_output(head):
    """A channel-pruned layer whose channels reach an output through layers that do not mix
    channels (an activation, pooling, dropout, a nested model, a concatenation) stays dense,
    as the layer making the output does; the convolution before it is pruned. Only the
    output's own producer used to be kept: half the classes of a softmax head in float32
    (Keras' mixed-precision advice) were zeroed."""
    model = _heads()[head]()
    pruned = prunable.make_prunable(model, granularity="channel")
    masked = {layer.name for layer in prunable.masked_layers(pruned)}
    pruned_name = "pruned" if head == "depthwise_then_pool" else "conv"
    assert pruned_name in masked and "last" not in masked and "other" not in masked
    assert pruning.update_masks(pruned, 0.5)[pruned_name] > 0.3
    with pytest.raises(ValueError, match="'last' cannot be pruned.*reach a model output"):
        prunable.make_prunable(model, granularity="channel", layers=["last"])


def test_m_by_n_pattern_holds_in_every_group():
    model = _model()
    pruned = prunable.make_prunable(model, granularity="2:4")
    left = {layer.name for layer in prunable.masked_layers(pruned)}
    assert "depthwise" not in left and "conv" in left  # 4 input channels: 2:4 fits
    pruning.update_masks(pruned, 0.0)
    for layer in prunable.masked_layers(pruned):
        for name, mask in _masks(layer).items():
            axis = prunable.prunable_weights(layer)[name][1][0]
            blocks = np.moveaxis(mask, axis, -1).reshape(-1, 4)
            assert np.all(blocks.sum(-1) == 2), (layer.name, name)
            values = np.moveaxis(np.abs(_weights(layer)[name]), axis, -1).reshape(-1, 4)
            assert np.all(values[blocks == 0] == 0)
    with pytest.raises(ValueError, match="3 input channels"):
        x = keras.Input((8, 8, 3))
        prunable.make_prunable(keras.Model(x, keras.layers.Conv2D(4, 3, name="c")(x)),
                               granularity="2:4", layers=["c"])


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_pruned_weights_stay_exactly_zero_with_zero_gradient(optimizer):
    """After masks are set mid-training (with non-zero momentum/moments), compiled steps keep
    every pruned entry at exactly 0: zero gradient through the masked read, and the
    optimizer's slots for it zeroed. A twin without the masked read (planted) fails."""
    pruned = prunable.make_prunable(_model())
    opt = (keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd_momentum"
           else keras.optimizers.Adam(0.01))
    pruned.compile(opt, "mse")
    x, y = _x(n=8), np.random.default_rng(1).standard_normal((8, 3)).astype("float32")
    pruned.fit(x, y, epochs=2, batch_size=4, verbose=0)  # momenta are non-zero now
    pruning.update_masks(pruned, 0.6)
    pruned.fit(x, y, epochs=3, batch_size=4, verbose=0)
    for layer in prunable.masked_layers(pruned):
        for name, mask in _masks(layer).items():
            assert np.all(_weights(layer)[name][mask == 0] == 0), (layer.name, name)
    # the gradient itself: zero on pruned entries
    head = pruned.get_layer("dense")
    mask = _masks(head)["_kernel"]
    grads = _gradients(pruned, x, y, head.pruned_variable("_kernel"))
    assert np.all(grads[mask == 0] == 0) and np.any(grads[mask == 1] != 0)


def _gradients(model, x, y, variable):
    index = [id(v) for v in model.trainable_variables].index(id(variable))

    def loss_fn(*values):
        return keras.ops.mean(keras.ops.square(
            _stateless(model, values, x) - keras.ops.convert_to_tensor(y)))

    values = [to_numpy(v) for v in model.trainable_variables]
    return harness.backend_gradients(loss_fn, values)[index]


def _stateless(model, values, x):
    nontrainable = [v.value for v in model.non_trainable_variables]
    y, _ = model.stateless_call(list(values), nontrainable, x, training=False)
    return y


def test_masks_survive_a_keras_file_and_training_goes_on(tmp_path):
    pruned = prunable.make_prunable(_model(), granularity={"conv": "channel", "dense": "2:4"})
    pruning.update_masks(pruned, 0.5)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    x = _x()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    for a, b in zip(prunable.masked_layers(pruned), prunable.masked_layers(loaded)):
        assert (a.granularity, type(a)) == (b.granularity, type(b))
        for name in a.pruning_masks:
            np.testing.assert_array_equal(_masks(a)[name], _masks(b)[name])
    assert loaded.get_layer("conv").granularity == "channel"
    assert loaded.get_layer("dense").granularity == "2:4"


@pytest.mark.parametrize("call, error, pattern", [
    (lambda m: prunable.make_prunable(m, granularity="blocks"), ValueError,
     r"granularity to be one of \['weight', 'connection', 'channel'\]"),
    (lambda m: prunable.make_prunable(m, granularity="4:2"), ValueError, "1 <= m < n"),
    (lambda m: prunable.make_prunable(m, granularity="2:x"), ValueError, "1 <= m < n"),
    (lambda m: prunable.make_prunable(m, round_to=0), ValueError, "round_to"),
    (lambda m: prunable.make_prunable(m, layers=["nope"]), ValueError, "no layer 'nope'"),
    (lambda m: prunable.make_prunable(m, layers=[3]), TypeError, "layers"),
    (lambda m: prunable.make_prunable(prunable.make_prunable(m)), ValueError, "already"),
    (lambda m: pruning.update_masks(prunable.make_prunable(m), 1.0), ValueError, "sparsity"),
    (lambda m: pruning.update_masks(m, 0.5), ValueError, "make_prunable"),
    (lambda m: prunable.make_prunable(keras.Sequential([keras.layers.Dense(2)])), ValueError,
     "built"),
])
def test_bad_input_is_refused_before_any_change(call, error, pattern):
    x = keras.Input((6,))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4)(x)))
    before = [to_numpy(w) for w in model.weights]
    with pytest.raises(error, match=pattern):
        call(model)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_strip_gives_the_plain_classes_with_identical_outputs():
    pruned = prunable.make_prunable(_model(), granularity={"conv": "channel", "dense": "2:4"})
    pruning.update_masks(pruned, 0.5)
    plain = pruning.strip(pruned)
    assert not prunable.masked_layers(plain)
    for layer in prunable.masked_layers(pruned):
        assert type(plain.get_layer(layer.name)) is layer.pruned_class
    x = _x()
    np.testing.assert_allclose(plain.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    kernel = to_numpy(plain.get_layer("conv").kernel)
    assert np.sum(np.all(kernel == 0, axis=(0, 1, 2))) == 4  # half the channels, exact zeros


def _mlp(seed, granularity="weight"):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8,))
    y = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    y = keras.layers.Dense(3, name="out")(y)
    model = prunable.make_prunable(keras.Model(x, y), granularity=granularity)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    return model


def _mlp_data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((64, 8)).astype("float32"),
            rng.standard_normal((64, 3)).astype("float32"))


def test_pruning_callback_follows_the_schedule_and_logs_sparsity():
    model = _mlp(0)
    x, y = _mlp_data()
    schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=4)
    cb = callbacks.Pruning(schedule)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False, callbacks=[cb])
    assert [step for step, _, _ in cb.updates] == [0, 4, 8, 12]
    assert abs(history.history["sparsity/hidden"][-1] - 0.8) < 0.02
    assert abs(pruning.sparsity_report(model)["total"] - 0.8) < 0.02
    assert pruning.sparsity(model) == pruning.sparsity_report(model)  # any kind of layer
    with pytest.raises(ValueError, match="make_prunable"):
        plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        plain.compile("sgd", "mse")
        plain.fit(x, y, verbose=0, callbacks=[callbacks.Pruning(schedule)])
    with pytest.raises(ValueError, match=r"criterion to be one of \['magnitude', 'strength'"):
        callbacks.Pruning(schedule, criterion="entropy")
    with pytest.raises(ValueError, match="criterion='strength'.*SynapticConv2D"):
        model.fit(x, y, verbose=0, callbacks=[callbacks.Pruning(schedule, criterion="strength")])


@pytest.mark.parametrize("granularity", ["weight", "connection", "channel", "2:4"])
@pytest.mark.parametrize("interrupt_epoch", [1, 2])
def test_pruning_callback_resumes_exactly_with_backup_and_restore(interrupt_epoch, granularity,
                                                                   tmp_path):
    """Interrupted between two updates (epoch 1 = step 4..7, updates at 0, 6, 12) or at one
    (epoch 2 = step 8): the resumed run's masks and weights equal the uninterrupted run's,
    for every granularity."""
    x, y = _mlp_data()
    schedule = pruning.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=12, frequency=6)
    fit_kwargs = dict(batch_size=16, epochs=4, verbose=0, shuffle=False)
    full = _mlp(3, granularity)
    full.fit(x, y, callbacks=[callbacks.Pruning(schedule)], **fit_kwargs)
    backup = str(tmp_path / "backup")
    first = _mlp(3, granularity)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, callbacks=[callbacks.Pruning(schedule),
                                   keras.callbacks.BackupAndRestore(backup),
                                   harness.InterruptAtEpoch(interrupt_epoch)], **fit_kwargs)
    resumed = _mlp(4, granularity)  # different init: everything must come from the backup
    resumed.fit(x, y, callbacks=[callbacks.Pruning(schedule),
                                 keras.callbacks.BackupAndRestore(backup)], **fit_kwargs)
    for a, b in zip(prunable.masked_layers(full), prunable.masked_layers(resumed)):
        for name in a.pruning_masks:
            np.testing.assert_array_equal(_masks(a)[name], _masks(b)[name])
    for a, b in zip(full.weights, resumed.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7,
                                   err_msg=a.path)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_pruned_model_runs_on_unknown_image_sizes_traced_and_compiled(jit_compile):
    """Every prunable layer type on `keras.Input((None, None, C))`, masks set: predict and a
    train step on two image sizes agree with the eager model, traced (jit_compile=False)
    and compiled (XLA on jax/tensorflow, torch.compile on torch)."""
    pruned = prunable.make_prunable(_model(size=None))
    pruning.update_masks(pruned, 0.5)
    pruned.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse", jit_compile=jit_compile)
    for seed, hw in enumerate([(8, 8), (11, 7)]):
        xs = np.random.default_rng(seed).standard_normal((2, *hw, 4)).astype("float32")
        eager = to_numpy(pruned(xs))
        np.testing.assert_allclose(pruned.predict_on_batch(xs), eager, rtol=1e-4, atol=1e-5)
        loss = pruned.train_on_batch(xs, np.zeros((2, 3), "float32"))
        assert np.isfinite(loss)
    for layer in prunable.masked_layers(pruned):
        for name, mask in _masks(layer).items():
            assert np.all(_weights(layer)[name][mask == 0] == 0), (layer.name, name)


def test_mixed_precision_keeps_the_compute_dtype():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        x = keras.Input((6, 6, 4))
        y = keras.layers.Conv2D(4, 3, name="conv")(x)
        y = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(y))
        model = keras.Model(x, y)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    pruned = prunable.make_prunable(model)
    pruning.update_masks(pruned, 0.5)
    xs = _x(n=2)[:, :6, :6]
    out = pruned(xs)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(out).astype("float32"),
                               to_numpy(pruning.strip(pruned)(xs)).astype("float32"),
                               rtol=1e-3, atol=1e-3)
    assert pruned.get_layer("conv").pruning_masks["_kernel"].dtype == "float32"



def test_channel_pruned_plain_model_compacts_through_conv_and_dense():
    """A plain Keras CNN + MLP (no keras_convx layer), 50% of every conv's and hidden Dense's
    outputs pruned: `compact` removes them (conv channels AND Dense units), exact outputs."""
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(16, activation="relu", name="hidden")(y)
    y = keras.layers.Dense(4, name="out")(y)
    pruned = prunable.make_prunable(keras.Model(x, y), granularity="channel")
    pruning.update_masks(pruned, 0.5)
    small, report = pruning.compact(pruned, return_report=True)
    assert report["conv_channels_kept"] == {"c1": (3, 4), "c2": (4, 4)}
    assert report["dense_units_kept"] == {"hidden": (4, 8), "out": (8, 4)}
    assert report["params_after"] < report["params_before"] / 2
    assert small.get_layer("hidden").units == 8
    xs = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(small.predict(xs, verbose=0), pruned.predict(xs, verbose=0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compact_keeps_each_layers_objects_and_dtype(dtype):
    """What `compact` rebuilds keeps what the layer was trained with: a Conv2D's and a
    Dense's initializers, regularizers and constraints (so training goes on as before: the
    same penalty terms), and float64 weights in float64 (outputs equal to 1e-12). The conv
    layers used to come back without them, and every weight was rounded to float32."""
    keras.utils.set_random_seed(2)
    objects = dict(kernel_regularizer=keras.regularizers.L2(1e-3),
                   bias_regularizer=keras.regularizers.L1(1e-4),
                   kernel_constraint=keras.constraints.MaxNorm(3.0),
                   kernel_initializer="he_normal")
    x = keras.Input((8, 8, 3), dtype=dtype)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1", dtype=dtype,
                            **objects)(x)
    y = keras.layers.Conv2D(6, 3, padding="same", name="c2", dtype=dtype, **objects)(y)
    y = keras.layers.GlobalAveragePooling2D(dtype=dtype)(y)
    y = keras.layers.Dense(4, name="out", dtype=dtype, **objects)(y)
    pruned = prunable.make_prunable(keras.Model(x, y), granularity="channel")
    pruning.update_masks(pruned, 0.5)
    small, report = pruning.compact(pruned, return_report=True)
    assert report["conv_channels_kept"] == {"c1": (3, 4), "c2": (4, 3)}
    for name in ("c1", "c2", "out"):
        config = small.get_layer(name).get_config()
        for key, value in objects.items():
            assert config[key] == pruned.get_layer(name).get_config()[key], (name, key)
        assert small.get_layer(name).kernel.dtype == dtype
    assert len(small.losses) == len(pruned.losses) == 6
    # c1's kept kernel slices are the pruned layer's, bit for bit (no rounding to float32)
    keep = np.flatnonzero(_masks(pruned.get_layer("c1"))["_kernel"].reshape(-1, 8)[0])
    np.testing.assert_array_equal(to_numpy(small.get_layer("c1").kernel),
                                  _weights(pruned.get_layer("c1"))["_kernel"][..., keep])
    xs = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(dtype)
    np.testing.assert_allclose(to_numpy(small(xs)), to_numpy(pruned(xs)), rtol=1e-5,
                               atol=1e-5)


def test_global_scope_ranks_all_layers_together():
    """One threshold over every layer's units: the layer with the smaller weights loses more,
    every kept |w| ≥ every pruned |w| across layers, the total is the target; channels of
    different sizes compare by their mean |w|."""
    x = keras.Input((8,))
    small = keras.layers.Dense(8, name="small")
    big = keras.layers.Dense(4, name="big")
    model = keras.Model(x, big(small(x)))
    rng = np.random.default_rng(0)
    small.kernel.assign(rng.uniform(-0.1, 0.1, (8, 8)).astype("float32"))
    big.kernel.assign(rng.uniform(-1.0, 1.0, (8, 4)).astype("float32"))
    pruned = prunable.make_prunable(model)
    before = [np.abs(_weights(layer)["_kernel"]) for layer in prunable.masked_layers(pruned)]
    report = pruning.update_masks(pruned, 0.5, scope="global")
    assert report["total"] == 0.5 and report["small"] > 0.5 > report["big"]
    masks = [_masks(layer)["_kernel"] for layer in prunable.masked_layers(pruned)]
    kept = np.concatenate([w[m == 1] for w, m in zip(before, masks)])
    dropped = np.concatenate([w[m == 0] for w, m in zip(before, masks)])
    assert kept.min() >= dropped.max()
    channels = prunable.make_prunable(model, granularity="channel", layers=["small"])
    pruning.update_masks(channels, 0.25, scope="global")
    mask = _masks(channels.get_layer("small"))["_kernel"]
    assert mask.sum(axis=0).tolist().count(0) == 2  # 2 of 8 channels
    with pytest.raises(ValueError, match="one granularity"):
        mixed = prunable.make_prunable(model, granularity={"small": "channel"})
        pruning.update_masks(mixed, 0.5, scope="global")
    with pytest.raises(ValueError, match="scope"):
        pruning.update_masks(pruned, 0.5, scope="net")


def test_sequential_model_is_made_prunable_and_stripped():
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(8, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="d")])
    pruned = prunable.make_prunable(model, granularity="2:4")
    assert isinstance(pruned, keras.Sequential)
    assert [layer.name for layer in prunable.masked_layers(pruned)] == ["c", "d"]
    pruning.update_masks(pruned, 0.0)
    x = _x(n=2)
    np.testing.assert_allclose(pruning.strip(pruned).predict(x, verbose=0),
                               pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
