"""The main job: train and evaluate small models on bundled data, one row per layer family.

Run `python -m keras_convx.demo [--backend jax] [--epochs 8] [--out demo_out]` (or
`make demo`). The data is scikit-learn's bundled `load_digits` (1,797 8×8 digits), upsampled
to 32×32; the test split is also evaluated rotated by 90°, 180° and 270°, which shows what
rotation-equivariant layers buy. The demo prints a table (model, parameters, accuracy per
rotation, seconds) and writes plots (PNG) and `results.json` to the output folder.

Set `KERAS_CONVX_FAST=1` for a seconds-long smoke run (used by the test suite).
"""

import argparse
import json
import os
import sys
import tempfile
import time

DEFAULT_SIZE = 32
ROTATIONS = (0, 90, 180, 270)


def fast_mode():
    """True when `KERAS_CONVX_FAST=1`: demo, guides and examples shrink data and epochs."""
    return os.environ.get("KERAS_CONVX_FAST", "0").lower() in ("1", "true", "yes")


def default_out(name):
    """Where a guide, example or the demo writes when not told: a folder under the system's
    temporary directory (never the current folder unasked)."""
    return os.path.join(tempfile.gettempdir(), "keras_convx", name)


def script_options(doc, name, argv=None, extra=()):
    """`--help`, `--fast` and `--out DIR` for a guide or example → `(out, fast)`.

    Defaults come from the environment (`KERAS_CONVX_FAST=1`, `KERAS_CONVX_OUT`), else not
    fast and `default_out(name)`. The choice is written back to the environment, so
    `fast_mode()` and subprocesses the script starts agree with it. The folder is created.

    Args:
        doc: the script's docstring (its first line is the `--help` description).
        name: the script's name (the default folder's).
        argv: arguments (default `sys.argv[1:]`).
        extra: `(flag, add_argument kwargs)` pairs for script-specific flags.

    Example (at the top of a guide):

    ```python
    OUT, FAST = demo.script_options(__doc__, "pde_layers")
    ```
    """
    lines = (doc or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=lines[0].lstrip("# ") if lines else name)
    parser.add_argument("--fast", action="store_true", default=fast_mode(),
                        help="a smoke run: little data, one epoch (also KERAS_CONVX_FAST=1)")
    parser.add_argument("--out", default=os.environ.get("KERAS_CONVX_OUT") or default_out(name),
                        help="folder for the plots and results (also KERAS_CONVX_OUT; default "
                             f"{default_out(name)})")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ["KERAS_CONVX_FAST"] = "1" if args.fast else "0"
    os.environ["KERAS_CONVX_OUT"] = args.out
    os.makedirs(args.out, exist_ok=True)
    return args.out, args.fast


def load_digits_data(size=DEFAULT_SIZE, test_fraction=0.25, seed=0, limit=None):
    """scikit-learn's bundled digits, bilinearly upsampled to `size`×`size`, channels_last.

    Returns `(x_train, y_train, x_test, y_test)`: float32 images in [0, 1] of shape
    (N, size, size, 1) and int32 labels; a stratified split with a fixed seed.
    `limit` keeps at most that many images (for fast runs).
    """
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0
    labels = digits.target.astype("int32")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    if limit is not None:
        order = order[:limit]
    images, labels = images[order], labels[order]
    images = _resize_bilinear(images, size)[..., None]
    n_test = int(round(len(images) * test_fraction))
    test_idx = np.concatenate(
        [np.flatnonzero(labels == c)[: max(1, n_test // 10)] for c in range(10)]
    )
    train_mask = np.ones(len(images), bool)
    train_mask[test_idx] = False
    return images[train_mask], labels[train_mask], images[test_idx], labels[test_idx]


def _resize_bilinear(images, size):
    """Bilinear resize of (N, h, w) images (align-corners=False), in NumPy."""
    import numpy as np

    n, h, w = images.shape

    def axis_weights(src, dst):
        pos = (np.arange(dst) + 0.5) * src / dst - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        frac = pos - lo
        m = np.zeros((dst, src), np.float32)
        m[np.arange(dst), lo] += 1 - frac
        m[np.arange(dst), hi] += frac
        return m

    rows, cols = axis_weights(h, size), axis_weights(w, size)
    return np.einsum("ih,nhw,jw->nij", rows, images, cols).astype("float32")


def rotate(images, degrees):
    """Rotate a batch of channels_last images counter-clockwise by a multiple of 90°."""
    import numpy as np

    if degrees % 90:
        raise ValueError(f"Expected degrees to be a multiple of 90. Received: degrees={degrees}")
    return np.ascontiguousarray(np.rot90(images, k=degrees // 90, axes=(1, 2)))


def plain_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10, first_conv=None,
              name="plain_cnn"):
    """The baseline row: three 3×3 Conv2D-BN-ReLU blocks, global average pooling, softmax.

    `first_conv`, a layer factory, replaces the first 3×3 convolution (the other rows).
    """
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate((16, 32, 64)):
        if i == 0 and first_conv is not None:
            x = first_conv(width)(x)
        else:
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        if i < 2:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def lpsc_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10):
    """The baseline with a 9×9 log-polar stem (rings 2, sectors 6, growth 3) instead of 3×3."""
    from keras_convx.layers import LogPolarConv2D

    return plain_cnn(
        input_shape,
        num_classes,
        first_conv=lambda width: LogPolarConv2D(width, 9, rings=2, sectors=6, growth_rate=3.0,
                                                use_bias=False),
        name="lpsc_cnn",
    )


def equivariant_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10, e4=False,
                    group="p4", name=None):
    """A small rotation-invariant p4 network: the group counterpart of `plain_cnn`.

    Lifting 3×3 conv (8 fields) → group BN → ReLU → max pool; two blocks of [group 3×3 conv
    (or, with `e4=True`, an E4 layer k = 5, r = 1, 2 slices) → group BN → ReLU], the first
    followed by max pooling; group max pool, global max pool, softmax. Exactly invariant to
    90° rotations of inputs whose side is divisible by 4.
    """
    import keras

    from keras_convx.layers import E4Conv2D
    from keras_convx.layers import GroupBatchNormalization
    from keras_convx.layers import GroupConv2D
    from keras_convx.layers import GroupLiftConv2D
    from keras_convx.layers import GroupPooling

    def block(x, fields):
        if e4:
            x = E4Conv2D(fields, 5, group=group, reduction_ratio=1, slices=2)(x)
        else:
            x = GroupConv2D(fields, 3, group=group, use_bias=False)(x)
        return keras.layers.ReLU()(GroupBatchNormalization(group, momentum=0.9)(x))

    inputs = keras.Input(input_shape)
    x = GroupLiftConv2D(8, 3, group=group, use_bias=False)(inputs)
    x = keras.layers.ReLU()(GroupBatchNormalization(group, momentum=0.9)(x))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.MaxPooling2D()(block(x, 8))
    x = block(x, 16)
    x = GroupPooling(group)(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name or ("e4_cnn" if e4 else "gcnn"))


def e4_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10):
    """`equivariant_cnn` with E4 layers in its two blocks."""
    return equivariant_cnn(input_shape, num_classes, e4=True)


def pde_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10, depth=16):
    """4×4 average pooling to 8×8, then `applications.pde_net` (16 hyperbolic PDE layers)."""
    import keras

    from keras_convx.applications import pde_net

    inputs = keras.Input(input_shape)
    x = keras.layers.AveragePooling2D(input_shape[0] // 8)(inputs)
    body = pde_net(tuple(x.shape[1:]), num_classes, depth=depth, width=16, kind="hyperbolic")
    return keras.Model(inputs, body(x), name="pde_cnn")


def shared_basis_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10):
    """2×2 average pooling to 16×16, then `applications.resnet_cifar(14, S4U1)`: one shared
    filter basis per stage (orthonormality λ = 10), softmax output."""
    import keras

    from keras_convx.applications import resnet_cifar

    inputs = keras.Input(input_shape)
    x = keras.layers.AveragePooling2D(2)(inputs)
    body = resnet_cifar(14, num_classes, shared_bases=4, unique_bases=1,
                        input_shape=tuple(x.shape[1:]))
    outputs = keras.layers.Softmax()(body(x))
    return keras.Model(inputs, outputs, name="shared_basis_cnn")


def synaptic_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10, strength_l1=5e-4,
                 final_sparsity=0.9):
    """The plain CNN with every conv a `SynapticConv2D` (L1 on the strengths) and the batch
    norms without γ (the paper's setting: |s| then tracks ‖W‖·‖X‖).

    `model.demo_callbacks(total_steps)` gives the demo's pruning callback: sparsity rising
    from 0 to `final_sparsity` (`PolynomialDecay`) between 25% and 75% of training, then
    fine-tuning with the masks fixed; one global threshold on the strengths normalised per
    output channel (the guide measures why).
    """
    import keras

    from keras_convx import callbacks
    from keras_convx import pruning
    from keras_convx.layers import SynapticConv2D

    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate((16, 32, 64)):
        x = SynapticConv2D(width, 3, padding="same", use_bias=False,
                           strength_regularizer=keras.regularizers.L1(strength_l1))(x)
        x = keras.layers.BatchNormalization(momentum=0.9, scale=False)(x)
        x = keras.layers.ReLU()(x)
        if i < 2:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="synaptic_cnn")

    def demo_callbacks(total_steps):
        begin, end = total_steps // 4, max(total_steps * 3 // 4, total_steps // 4 + 1)
        schedule = pruning.PolynomialDecay(0.0, final_sparsity, begin, end,
                                           frequency=max(1, (end - begin) // 10))
        return [callbacks.SynapticPruning(schedule, normalization="channel")]

    model.demo_callbacks = demo_callbacks
    return model


def pairwise_cnn(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 1), num_classes=10):
    """The plain CNN trained with pairwise consistency learning (erase where the CAM of the
    label is ≥ 0.5, erased-view loss β = 1, consistency λ = 1): a
    `keras_convx.training.PairwiseConsistency` wrapper, trained with the same compile/fit."""
    from keras_convx import training

    return training.PairwiseConsistency(plain_cnn(input_shape, num_classes, name="pcl_cnn"),
                                        erase_threshold=0.5, name="pairwise_consistency")


# One row per layer family: (name, builder, what it shows). Later families append rows.
DEMO_MODELS = [
    ("plain CNN (Conv2D 3×3)", plain_cnn, "baseline"),
    ("LPSC stem (LogPolarConv2D 9×9)", lpsc_cnn, "log-polar space convolution"),
    ("p4 G-CNN (GroupConv2D)", equivariant_cnn, "group-equivariant convolution"),
    ("p4 E4 net (E4Conv2D)", e4_cnn, "efficient equivariant E4 layer"),
    ("PDE net (16 HyperbolicConv2D)", pde_cnn, "stable deep PDE layers"),
    ("ResNet-14 S4U1 (SharedBasisConv2D)", shared_basis_cnn, "deeply shared filter bases"),
    ("CNN, 90% connections pruned (SynapticConv2D)", synaptic_cnn, "synaptic strength pruning"),
    ("plain CNN + pairwise consistency", pairwise_cnn, "pairwise consistency learning"),
]


def train_and_evaluate(builder, data, epochs, batch_size=32, seed=0, verbose=1):
    """Train `builder()` on `data`; returns (model, history dict, {rotation: accuracy}, s)."""
    import keras

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = builder()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    steps = epochs * -(-len(x_train) // batch_size)
    fit_callbacks = model.demo_callbacks(steps) if hasattr(model, "demo_callbacks") else []
    start = time.time()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=epochs,
        batch_size=batch_size,
        verbose=verbose,
        callbacks=fit_callbacks,
    )
    accuracy = {
        deg: float(model.evaluate(rotate(x_test, deg), y_test, verbose=0,
                                  return_dict=True)["accuracy"])
        for deg in ROTATIONS
    }
    return model, history.history, accuracy, time.time() - start


def _plot(results, data, out):
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the session's backend stays as it is

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for r in results:
        axes[0].plot(r["history"]["val_accuracy"], label=r["model"])
    axes[0].set(xlabel="epoch", ylabel="test accuracy (upright)", title="training")
    axes[0].legend(fontsize=8)
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = np.arange(len(ROTATIONS)) + i * width
        axes[1].bar(xs, [r["accuracy"][str(d)] for d in ROTATIONS], width, label=r["model"])
    axes[1].set_xticks(np.arange(len(ROTATIONS)) + width * (len(results) - 1) / 2)
    axes[1].set_xticklabels([f"{d}°" for d in ROTATIONS])
    axes[1].set(ylabel="accuracy", ylim=(0, 1), title="test accuracy per rotation")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=100)

    x_test = data[2]
    fig = Figure(figsize=(8, 4.4))
    axes = fig.subplots(len(ROTATIONS), 8)
    for row, deg in enumerate(ROTATIONS):
        for col in range(8):
            axes[row, col].imshow(rotate(x_test[:8], deg)[col, ..., 0], cmap="gray")
            axes[row, col].axis("off")
        axes[row, 0].set_title(f"{deg}°", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "samples.png"), dpi=100)


def format_table(results):
    head = ["model", "params"] + [f"acc {d}°" for d in ROTATIONS] + ["seconds"]
    rows = [
        [r["model"], f"{r['params']:,}"]
        + [f"{r['accuracy'][str(d)]:.3f}" for d in ROTATIONS]
        + [f"{r['seconds']:.1f}"]
        for r in results
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_convx.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                        help="Keras backend (default: KERAS_BACKEND or Keras' default)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default=default_out("demo"),
                        help=f"folder for plots and results.json (default {default_out('demo')})")
    parser.add_argument("--fast", action="store_true", default=fast_mode(),
                        help="a smoke run: 300 images, one epoch (also KERAS_CONVX_FAST=1)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="substrings selecting rows of the table (default: all)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    if args.backend and os.environ.get("KERAS_BACKEND") != args.backend:
        # The backend is fixed when keras is first imported: restart with it set.
        env = dict(os.environ, KERAS_BACKEND=args.backend)
        cmd = [sys.executable, "-m", "keras_convx.demo", *(argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, cmd, env)

    import keras

    fast = args.fast
    epochs = 1 if fast else args.epochs
    data = load_digits_data(limit=300 if fast else None)
    os.makedirs(args.out, exist_ok=True)
    print(f"keras_convx demo — backend {keras.backend.backend()}, digits {data[0].shape[1:]}, "
          f"{len(data[0])} train / {len(data[2])} test, {epochs} epochs")
    rows = [m for m in DEMO_MODELS if not args.models or any(s in m[0] for s in args.models)]
    if not rows:
        parser.error(f"--models {args.models} selects none of {[m[0] for m in DEMO_MODELS]}")
    results = []
    for name, builder, _ in rows:
        print(f"\n--- {name}")
        model, history, accuracy, seconds = train_and_evaluate(builder, data, epochs)
        results.append({
            "model": name,
            "params": int(model.count_params()),
            "accuracy": {str(k): v for k, v in accuracy.items()},
            "seconds": seconds,
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        })
    table = format_table(results)
    print("\n" + table)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"backend": keras.backend.backend(), "epochs": epochs, "results": results}, f,
                  indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    _plot(results, data, args.out)
    print(f"\nwrote {args.out}/accuracy.png, samples.png, results.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
