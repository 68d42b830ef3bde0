"""Benchmark cases. Each case: a layer under test and its baselines, same input.

A case is a dict: name, family, input_shape (channels_last, with batch), `layer` (factory
of the layer under test) and `baselines` ({label: factory}). Later families append cases.
"""

import keras

from keras_convx.layers import DiffusionConv2D
from keras_convx.layers import E4Conv2D
from keras_convx.layers import FilterBasis
from keras_convx.layers import GroupConv2D
from keras_convx.layers import LogPolarConv2D
from keras_convx.layers import SharedBasisConv2D
from keras_convx.layers import SynapticConv2D


def conv2d(filters, k, **kw):
    return lambda: keras.layers.Conv2D(filters, k, padding="same", **kw)


def lpsc(filters, k, rings, sectors, growth_rate, implementation="auto"):
    return lambda: LogPolarConv2D(filters, k, rings=rings, sectors=sectors, growth_rate=growth_rate,
                                  implementation=implementation)


def gconv(fields, k, group="p4"):
    return lambda: GroupConv2D(fields, k, group=group, use_bias=False)


def e4(fields, k, r, slices, implementation="auto", group="p4"):
    return lambda: E4Conv2D(fields, k, group=group, reduction_ratio=r, slices=slices,
                            implementation=implementation)


def on_first(total, channels, factory):
    """`factory()`'s layer reading only the first `channels` of a `total`-channel input: a
    smaller group's baseline with the same fields, fed the same (wider) tensor."""
    def model():
        inputs = keras.Input((None, None, total))
        return keras.Model(inputs, factory()(inputs[..., :channels]))

    return model


def diffusion(k, stable=False):
    return lambda: DiffusionConv2D(kernel_size=k, stable=stable)


def shared(filters, size, unique, implementation="auto", basis_batch_norm=True):
    return lambda: SharedBasisConv2D(filters, FilterBasis(size, 3), unique_bases=unique,
                                     implementation=implementation,
                                     basis_batch_norm=basis_batch_norm)


def synaptic(filters, k, sparsity=0.0):
    def factory():
        layer = SynapticConv2D(filters, k, padding="same")
        if sparsity:
            from keras_convx import pruning

            layer.build((None, 8, 8, filters))
            pruning.prune(layer, sparsity)
        return layer

    return factory


def stripped(filters, k, channels, sparsity):
    """A SynapticConv2D pruned to `sparsity`, through `pruning.strip` (a model with a Conv2D)."""

    def factory():
        from keras_convx import pruning

        inputs = keras.Input((None, None, channels))
        model = keras.Model(inputs, SynapticConv2D(filters, k, padding="same")(inputs))
        pruning.prune(model, sparsity)
        return pruning.strip(model)

    return factory


def functional_conv2d(filters, k, channels):
    def factory():
        inputs = keras.Input((None, None, channels))
        return keras.Model(inputs, keras.layers.Conv2D(filters, k, padding="same")(inputs))

    return factory


_DIGITS_CNN = {}


def _pruned_digits_cnn(normalization):
    """The guide's setting: its synaptic CNN on 16×16 digits trained 20 epochs with the
    strength penalty (λ = 5e-4), then pruned to 90% connection sparsity in one shot (global
    threshold, the given normalization). Trained once per process. Speed depends only on the
    architecture compact leaves, so the guide's fine-tuning (masks fixed) is skipped."""
    if normalization not in _DIGITS_CNN:
        from keras_convx import demo
        from keras_convx import pruning

        x, y, _, _ = demo.load_digits_data(size=16)
        keras.utils.set_random_seed(0)
        model = demo.synaptic_cnn((16, 16, 1), 10)
        model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=20, batch_size=32, verbose=0)
        pruning.prune(model, 0.9, normalization=normalization)
        _DIGITS_CNN[normalization] = model
    return _DIGITS_CNN[normalization]


def compacted_digits_cnn(normalization):
    def factory():
        from keras_convx import pruning

        return pruning.compact(_pruned_digits_cnn(normalization))

    return factory


def unpruned_digits_cnn():
    from keras_convx import demo
    from keras_convx import pruning

    return pruning.strip(demo.synaptic_cnn((16, 16, 1), 10))


CASES = [
    {
        # The harness' noise floor: the same layer timed against itself.
        "name": "Conv2D 3×3 (noise floor)",
        "family": "harness",
        "input_shape": (16, 32, 32, 64),
        "layer": conv2d(64, 3),
        "baselines": {"Conv2D 3×3": conv2d(64, 3)},
    },
    {
        "name": "LogPolarConv2D 9×9 (2,6,3) 64→64, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 64),
        "layer": lpsc(64, 9, 2, 6, 3.0),
        "baselines": {
            "Conv2D 9×9": conv2d(64, 9),
            "Conv2D 5×5": conv2d(64, 5),
            "LPSC dense path (A)": lpsc(64, 9, 2, 6, 3.0, "dense"),
        },
    },
    {
        "name": "LogPolarConv2D 11×11 (3,8,2) 64→64, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 64),
        "layer": lpsc(64, 11, 3, 8, 2.0),
        "baselines": {
            "Conv2D 11×11": conv2d(64, 11),
            "Conv2D 5×5": conv2d(64, 5),
            "LPSC dense path (A)": lpsc(64, 11, 3, 8, 2.0, "dense"),
        },
    },
    {
        "name": "LogPolarConv2D 9×9 (2,6,3) stem 3→16, auto",
        "family": "log_polar",
        "input_shape": (16, 32, 32, 3),
        "layer": lpsc(16, 9, 2, 6, 3.0),
        "baselines": {
            "Conv2D 9×9": conv2d(16, 9),
            "Conv2D 3×3": conv2d(16, 3),
            "LPSC dense path (A)": lpsc(16, 9, 2, 6, 3.0, "dense"),
        },
    },
    {
        # MNIST-rot block of E4-Net (p4): 16 → 16 fields, k = 5, r = 1, 2 slices.
        "name": "E4Conv2D p4 16→16 k5 r1 s2 (MNIST-rot block)",
        "family": "equivariant",
        "input_shape": (16, 28, 28, 64),
        "layer": e4(16, 5, 1, 2),
        "baselines": {
            "GroupConv2D 5×5": gconv(16, 5),
            "GroupConv2D 3×3": gconv(16, 3),
            "E4 patch reference": e4(16, 5, 1, 2, "patches"),
            "E4 keras.ops shifts": e4(16, 5, 1, 2, "shifts"),
        },
    },
    {
        # CIFAR ResNet-18 E4 block (p4): 32 → 32 fields, k = 3, r = 2, 2 fields per slice.
        "name": "E4Conv2D p4 32→32 k3 r2 gc2 (CIFAR block)",
        "family": "equivariant",
        "input_shape": (16, 32, 32, 128),
        "layer": e4(32, 3, 2, 16),
        "baselines": {
            "GroupConv2D 3×3": gconv(32, 3),
            "E4 patch reference": e4(32, 3, 2, 16, "patches"),
            "E4 keras.ops shifts": e4(32, 3, 2, 16, "shifts"),
        },
    },
    {
        # c8 against p4 with the same fields (4× the multiply-adds: both channel counts double)
        # and with the same channels (half the fields, the same multiply-adds).
        "name": "GroupConv2D c8 16→16 k3",
        "family": "equivariant",
        "input_shape": (16, 28, 28, 16 * 8),
        "layer": gconv(16, 3, "c8"),
        "baselines": {
            "GroupConv2D p4 16→16 k3 (same fields)": on_first(128, 64, gconv(16, 3)),
            "GroupConv2D p4 32→32 k3 (same channels)": gconv(32, 3),
            "Conv2D 3×3 128→128": conv2d(128, 3),
        },
    },
    {
        "name": "GroupConv2D d8 8→8 k5",
        "family": "equivariant",
        "input_shape": (16, 28, 28, 8 * 16),
        "layer": gconv(8, 5, "d8"),
        "baselines": {
            "GroupConv2D p4m 8→8 k5 (same fields)": on_first(128, 64, gconv(8, 5, "p4m")),
            "GroupConv2D p4m 16→16 k5 (same channels)": gconv(16, 5, "p4m"),
        },
    },
    {
        "name": "E4Conv2D c8 16→16 k5 r1 s2",
        "family": "equivariant",
        "input_shape": (16, 28, 28, 16 * 8),
        "layer": e4(16, 5, 1, 2, group="c8"),
        "baselines": {
            "GroupConv2D c8 5×5": gconv(16, 5, "c8"),
            "E4Conv2D p4 16→16 k5 (same fields)": on_first(128, 64, e4(16, 5, 1, 2)),
        },
    },
    {
        # Issue 6's goal: DiffusionConv2D fwd+bwd ≤ 2.5× a 3×3 Conv2D with the same channels.
        "name": "DiffusionConv2D 64 ch, K 1×1",
        "family": "pde",
        "input_shape": (16, 32, 32, 64),
        "layer": diffusion(1),
        "baselines": {
            "Conv2D 3×3": conv2d(64, 3),
            "DiffusionConv2D 1×1 stable=True": diffusion(1, True),
        },
    },
    {
        "name": "DiffusionConv2D 64 ch, K 3×3",
        "family": "pde",
        "input_shape": (16, 32, 32, 64),
        "layer": diffusion(3),
        "baselines": {
            "Conv2D 3×3": conv2d(64, 3),
            "DiffusionConv2D 3×3 stable=True": diffusion(3, True),
        },
    },
    {
        # Issue 5's goal: ≤ 1.1× a Conv2D of the same shapes; faster when u + s < filters.
        # S16U1 at 64 channels (rank 17): auto = basis-first; in training the basis BN
        # needs the basis responses, so basis-first is the only order there.
        "name": "SharedBasisConv2D 64→64 S16U1, basis BN",
        "family": "shared_basis",
        "input_shape": (16, 32, 32, 64),
        "layer": shared(64, 16, 1),
        "baselines": {
            "Conv2D 3×3 (no bias)": conv2d(64, 3, use_bias=False),
            "Conv2D 3×3 + BN": lambda: keras.Sequential(
                [keras.layers.Conv2D(64, 3, padding="same", use_bias=False),
                 keras.layers.BatchNormalization()]),
        },
    },
    {
        "name": "SharedBasisConv2D 64→64 S16U1, no basis BN",
        "family": "shared_basis",
        "input_shape": (16, 32, 32, 64),
        "layer": shared(64, 16, 1, basis_batch_norm=False),
        "baselines": {
            "Conv2D 3×3 (no bias)": conv2d(64, 3, use_bias=False),
            "kernel-first order": shared(64, 16, 1, "kernel_first", basis_batch_norm=False),
        },
    },
    {
        # u + s > filters: auto = kernel-first (synthesised kernel, one conv).
        "name": "SharedBasisConv2D 64→64 S64U4, no basis BN",
        "family": "shared_basis",
        "input_shape": (16, 32, 32, 64),
        "layer": shared(64, 64, 4, basis_batch_norm=False),
        "baselines": {
            "Conv2D 3×3 (no bias)": conv2d(64, 3, use_bias=False),
            "basis-first order": shared(64, 64, 4, "basis_first", basis_batch_norm=False),
        },
    },
    {
        # Issue 7's goal: a training step ≤ 1.2× a Conv2D of the same shapes.
        "name": "SynapticConv2D 64→64 3×3",
        "family": "synaptic",
        "input_shape": (16, 32, 32, 64),
        "layer": synaptic(64, 3),
        "baselines": {
            "Conv2D 3×3": conv2d(64, 3),
            "SynapticConv2D 90% masked": synaptic(64, 3, 0.9),
        },
    },
    {
        # strip: a plain Conv2D — Conv2D speed by construction (masks are not sparse compute).
        "name": "strip(SynapticConv2D 64→64 3×3, 90% pruned)",
        "family": "synaptic",
        "input_shape": (16, 32, 32, 64),
        "layer": stripped(64, 3, 64, 0.9),
        "baselines": {"Conv2D 3×3": conv2d(64, 3), "Conv2D 3×3 in a Functional model":
                      functional_conv2d(64, 3, 64)},
    },
    {
        # compact: the guide's CNN pruned to 90% connection sparsity, dead channels removed,
        # against the same CNN unpruned (plain Conv2D). Batch 256 of 16×16 digits. Raw
        # strengths concentrate the pruning (whole channels die); channel-normalised ones
        # spread it (more accurate after fine-tuning, little to remove).
        "name": "compact(digits CNN at 90% connection sparsity, raw strength)",
        "family": "synaptic",
        "input_shape": (256, 16, 16, 1),
        "layer": compacted_digits_cnn(None),
        "baselines": {"unpruned CNN (Conv2D)": unpruned_digits_cnn},
    },
    {
        "name": "compact(digits CNN at 90% connection sparsity, channel-normalised)",
        "family": "synaptic",
        "input_shape": (256, 16, 16, 1),
        "layer": compacted_digits_cnn("channel"),
        "baselines": {"unpruned CNN (Conv2D)": unpruned_digits_cnn},
    },
]
