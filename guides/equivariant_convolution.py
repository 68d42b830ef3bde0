"""# Group-equivariant convolution and the efficient E4 layer

`keras_convx.layers` has p4/p4m group convolutions (Cohen & Welling's G-CNNs:
`GroupLiftConv2D`, `GroupConv2D`, `GroupBatchNormalization`, `GroupPooling`) and the E4
layer of He et al., "Efficient Equivariant Network" (NeurIPS 2021, `E4Conv2D`). Group
feature maps are ordinary 4-D tensors (channel `field·|G| + g`), so the layers mix freely
with ReLU, Dropout, Add and MaxPooling2D.

This guide:

1. measures the equivariance error of every layer (`keras_convx.analysis.equivariance_error`),
   with negative controls: a plain Conv2D, and an E4 layer with the official code's untied
   GroupNorm affine;
2. compares parameter counts of the official CIFAR ResNet-18s (E4R18 vs R18);
3. trains on upright digits and tests at 0/90/180/270°: a plain CNN collapses on rotated
   digits, the p4 G-CNN and the E4 net keep their accuracy at every angle.

Run: `KERAS_BACKEND=jax python guides/equivariant_convolution.py` (or tensorflow, torch; plots go to
$KERAS_CONVX_OUT, default a folder under the system temp dir; `--out DIR`, `--fast`, `--help`).

A full run (jax, 2-core CPU, 2026-11-25; digits upsampled to 32×32, 1,347 train / 450 test,
8 epochs, seed 0) gave, accuracy at 0°/90°/180°/270°:
plain CNN 0.895/0.041/0.389/0.057 (24,282 parameters); p4 G-CNN 0.939 at every angle (7,282);
p4 E4 net 0.825 at every angle (2,582). Equivariance errors: ~2e-7 for every layer, 1.2 for
the untied (official) GroupNorm and 1.4 for a plain Conv2D. E4R18 has 57% (p4) / 55% (p4m)
of the parameters of its G-CNN ResNet-18 (the paper: ~56%).
"""

import os

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx import analysis  # noqa: E402
from keras_convx import demo  # noqa: E402
from keras_convx.applications import e4_resnet18  # noqa: E402
from keras_convx.layers import E4Conv2D  # noqa: E402
from keras_convx.layers import GroupConv2D  # noqa: E402
from keras_convx.layers import GroupLiftConv2D  # noqa: E402

OUT, FAST = demo.script_options(__doc__, "equivariant_convolution")
rng = np.random.default_rng(0)


def randomize(layer, shape):
    layer.build(shape)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    return layer


# ## 1. Equivariance, measured
# f(g·x) against g·f(x) over all group elements; relative error, float32.
image = rng.standard_normal((2, 17, 17, 3)).astype("float32")
rows = []
for group, n in (("p4", 4), ("p4m", 8)):
    gmap = rng.standard_normal((2, 17, 17, 4 * n)).astype("float32")
    cases = [
        ("GroupLiftConv2D 5×5", randomize(GroupLiftConv2D(4, 5, group=group), image.shape), image, {}),
        ("GroupConv2D 3×3", randomize(GroupConv2D(4, 3, group=group), gmap.shape), gmap, {}),
        ("E4Conv2D k=5 (tied GroupNorm)", randomize(E4Conv2D(4, 5, group=group, reduction_ratio=1,
                                                             slices=2), gmap.shape), gmap, {}),
        ("E4Conv2D official_compat (untied)", randomize(E4Conv2D(4, 5, group=group, reduction_ratio=1,
                                                                 slices=2, official_compat=True),
                                                        gmap.shape), gmap, {}),
        ("plain Conv2D 3×3 (control)", keras.layers.Conv2D(4, 3, padding="same"), image,
         {"output_type": "image"}),
    ]
    for label, layer, x, kw in cases:
        rows.append((group, label, analysis.equivariance_error(layer, x, group, **kw)))
print(f"{'group':5} {'layer':36} relative equivariance error")
for group, label, err in rows:
    print(f"{group:5} {label:36} {err:.2e}")

# ## 2. Parameters: the official CIFAR ResNet-18s
params = {}
# (fast smoke runs use quarter widths: building the full networks takes a while)
widths = {"p4": (8, 16, 32, 64), "p4m": (6, 12, 22, 44)} if FAST else {"p4": None, "p4m": None}
for group in ("p4", "p4m"):
    for e4 in (False, True):
        model = e4_resnet18(group, 10, e4=e4, widths=widths[group])
        params[(group, e4)] = model.count_params()
    ratio = params[(group, True)] / params[(group, False)]
    print(f"{group}: R18 {params[(group, False)]:,} parameters, E4R18 {params[(group, True)]:,} "
          f"({ratio:.0%}; the paper reports ~56%)")

# ## 3. Train upright, test rotated
data = demo.load_digits_data(limit=300 if FAST else None)
epochs = 1 if FAST else 8
models = [("plain CNN", demo.plain_cnn), ("p4 G-CNN", demo.equivariant_cnn), ("p4 E4 net", demo.e4_cnn)]
results = {}
for label, builder in models:
    model, _, accuracy, seconds = demo.train_and_evaluate(builder, data, epochs, verbose=0)
    results[label] = (model.count_params(), accuracy, seconds)
    print(f"{label:10} {model.count_params():6,} params  " +
          "  ".join(f"{deg}°: {acc:.3f}" for deg, acc in accuracy.items()) + f"  ({seconds:.0f} s)")

fig, ax = plt.subplots(figsize=(7, 4))
width = 0.25
for i, (label, (_, accuracy, _)) in enumerate(results.items()):
    ax.bar(np.arange(4) + (i - 1) * width, list(accuracy.values()), width, label=label)
ax.set_xticks(range(4), [f"{d}°" for d in demo.ROTATIONS])
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1)
ax.set_title(f"Trained on upright digits, tested rotated ({keras.backend.backend()}, {epochs} epochs)")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "equivariant_rotated_digits.png"), dpi=100)
plt.close(fig)

# The claim, asserted on the run: the equivariant nets lose nothing under rotation.
for label in ("p4 G-CNN", "p4 E4 net"):
    acc = list(results[label][1].values())
    assert max(acc) - min(acc) <= 0.01, (label, acc)  # equal up to float32 near-ties
assert all(err < 1e-5 for _, label, err in rows if "tied" in label and "untied" not in label)
print(f"wrote {OUT}/equivariant_rotated_digits.png")
