"""# Synaptic strength: connection pruning that makes a model smaller and faster

A connection is one (input channel → output channel) k×k slice of a convolution.
`keras_convx.layers.SynapticConv2D` writes each slice as `s_ij · V_ij / ‖V_ij‖` with a
trainable synaptic strength `s_ij` (Lin et al., "Synaptic Strength For Convolutional Neural
Network", NeurIPS 2018); with the batch norm before it run without γ, |s_ij| measures the
information the connection carries. An L1 penalty on the strengths pushes most of them
toward zero; the weakest connections are then masked (`keras_convx.pruning.prune` or the
`keras_convx.callbacks.SynapticPruning` schedule) and the net is fine-tuned with the masks
fixed. `keras_convx.pruning.compact` finally removes the channels left without connections.

This guide, on scikit-learn's bundled digits (16×16):
1. trains the small synaptic CNN with the strength penalty λ and without it, and compares the
   strength histograms (the penalty moves them toward zero);
2. prunes the λ model at 50–95% connection sparsity by synaptic strength (one global
   threshold on the raw strengths as the paper, the same with the strengths normalised per
   output channel, and per layer) and by the kernel-L1 criterion, and fine-tunes each:
   accuracy vs sparsity;
3. compacts the 90% models and times them against the unpruned one.

Run: `KERAS_BACKEND=jax python guides/synaptic_pruning.py` (or tensorflow, torch;
plots go to $KERAS_CONVX_OUT,
default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`).

Results of a full run are in the README's synaptic-strength section (numbers printed by this
script; nothing below is asserted by it).
"""

import os
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx import callbacks  # noqa: E402
from keras_convx import demo  # noqa: E402
from keras_convx import pruning  # noqa: E402

OUT, FAST = demo.script_options(__doc__, "synaptic_pruning")
SIZE = 16
EPOCHS = 1 if FAST else 20
FINE_TUNE_EPOCHS = 1 if FAST else 4
SPARSITIES = (0.9,) if FAST else (0.5, 0.7, 0.8, 0.9, 0.95)
LAMBDA = 5e-4

x_train, y_train, x_test, y_test = demo.load_digits_data(size=SIZE, limit=300 if FAST else None)
print(f"backend {keras.backend.backend()}: digits {SIZE}×{SIZE}, {len(x_train)} train / "
      f"{len(x_test)} test")


def build(strength_l1):
    return demo.synaptic_cnn((SIZE, SIZE, 1), 10, strength_l1=strength_l1)


def compile_model(model, lr=2e-3):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def accuracy(model):
    return float(model.evaluate(x_test, y_test, verbose=0, batch_size=256)[1])


def strengths(model):
    return np.concatenate([np.abs(keras.ops.convert_to_numpy(layer.masked_strength())).ravel()
                           for layer in pruning.prunable_layers(model)])


# 1. Train with and without the strength penalty ---------------------------------------------
trained = {}
for lam in (LAMBDA, 0.0):
    keras.utils.set_random_seed(0)
    model = compile_model(build(lam))
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    trained[lam] = model
    s = strengths(model)
    print(f"λ = {lam:g}: test accuracy {accuracy(model):.3f}; |s| median {np.median(s):.3f}, "
          f"share of |s| < 0.05·max: {np.mean(s < 0.05 * s.max()):.2f}")

# 2. Sparsity sweep on the λ model --------------------------------------------------------------
base = trained[LAMBDA]
base_weights = base.get_weights()
base_accuracy = accuracy(base)
methods = [("strength", "global", None), ("strength", "global", "channel"),
           ("kernel_l1", "global", None), ("kernel_l1", "global", "channel"),
           ("strength", "layer", None)]
sweep = {m: {"before": [], "after": []} for m in methods}
per_layer_at_90 = {}
pruned_90 = {}
for criterion, scope, normalization in methods:
    for target in SPARSITIES:
        keras.utils.set_random_seed(1)
        model = compile_model(build(LAMBDA), lr=1e-3)
        model.set_weights(base_weights)
        report = pruning.prune(model, target, scope=scope, criterion=criterion,
                               normalization=normalization)
        before = accuracy(model)
        model.fit(x_train, y_train, epochs=FINE_TUNE_EPOCHS, batch_size=32, verbose=0)
        after = accuracy(model)
        method = (criterion, scope, normalization)
        sweep[method]["before"].append(before)
        sweep[method]["after"].append(after)
        if target == 0.9:
            per_layer_at_90[method] = {k: v for k, v in report.items() if k != "total"}
            if method[0] == "strength" and scope == "global":
                pruned_90[normalization] = model
        print(f"{criterion:>9} / {scope:<6} / {str(normalization):<7} sparsity {report['total']:.2f}: accuracy "
              f"{before:.3f} → {after:.3f} after {FINE_TUNE_EPOCHS} fine-tune epochs")
for method, layers in per_layer_at_90.items():
    print(f"per-layer sparsity at 90%, {method}: "
          + ", ".join(f"{v:.2f}" for v in layers.values()))

# The same, on a schedule during training (the callback), for comparison --------------------
keras.utils.set_random_seed(0)
scheduled = compile_model(build(LAMBDA))
steps = EPOCHS * -(-len(x_train) // 32)
schedule = pruning.PolynomialDecay(0.0, 0.9, begin_step=steps // 4, end_step=steps * 3 // 4,
                                   frequency=max(1, steps // 40))
scheduled.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0,
              callbacks=[callbacks.SynapticPruning(schedule, normalization="channel")])
print(f"PolynomialDecay 0 → 0.9 during training (channel-normalised): sparsity "
      f"{pruning.sparsity(scheduled)['total']:.2f}, accuracy {accuracy(scheduled):.3f}")

# 3. Compact the 90% models and time them ----------------------------------------------------
batch = np.repeat(x_test, -(-512 // len(x_test)), axis=0)[:512]


def predict_seconds(model, repeats=3 if FAST else 10):
    model.predict(batch, batch_size=512, verbose=0)  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(batch, batch_size=512, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


dense_model = compile_model(build(LAMBDA))
dense_model.set_weights(base_weights)
t_dense = predict_seconds(pruning.strip(dense_model))
for normalization, pruned in pruned_90.items():
    small, info = pruning.compact(pruned, return_report=True)
    diff = np.max(np.abs(keras.ops.convert_to_numpy(small(batch[:64]))
                         - keras.ops.convert_to_numpy(pruned(batch[:64]))))
    t_small = predict_seconds(small)
    print(f"compact (90%, strength, normalization={normalization}): params "
          f"{info['params_before']:,} → {info['params_after']:,}, MACs {info['macs_before']:,} → "
          f"{info['macs_after']:,}, channels kept (in, out) "
          f"{list(info['conv_channels_kept'].values())}, max |Δ| {diff:.1e}; predict 512 "
          f"images {t_dense * 1e3:.1f} ms unpruned → {t_small * 1e3:.1f} ms "
          f"({t_dense / t_small:.2f}× faster)")

# Plot ----------------------------------------------------------------------------------------
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
bins = np.linspace(0, max(strengths(trained[0.0]).max(), strengths(base).max()), 40)
for lam, model in trained.items():
    axes[0].hist(strengths(model), bins=bins, alpha=0.6, label=f"λ = {lam:g}")
axes[0].set(xlabel="|synaptic strength|", ylabel="connections", title="strengths after training")
axes[0].legend()
styles = dict(zip(methods, ("o-", "D-", "s--", "x--", "^:")))
for index, (method, curves) in enumerate(sweep.items()):
    label = f"{method[0]} ({method[1]}{', ' + method[2] if method[2] else ''})"
    axes[1].plot(SPARSITIES, curves["after"], styles[method], color=f"C{index}",
                 label=f"{label}, fine-tuned")
    axes[1].plot(SPARSITIES, curves["before"], styles[method], color=f"C{index}", alpha=0.3)
axes[1].axhline(base_accuracy, color="k", lw=0.8, label="unpruned")
axes[1].set(xlabel="connection sparsity", ylabel="test accuracy", ylim=(0, 1.02),
            title="accuracy vs sparsity (faint: before fine-tuning)")
axes[1].legend(fontsize=7)
fig.tight_layout()
path = os.path.join(OUT, "synaptic_pruning.png")
fig.savefig(path, dpi=110)
print(f"wrote {path}")
