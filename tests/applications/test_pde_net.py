"""applications.pde_net: structure, parameter counts, training and saving."""

import keras
import numpy as np
import pytest

from keras_convx.applications import pde_net
from keras_convx.layers import DiffusionConv2D
from keras_convx.layers import HyperbolicConv2D
from tests import harness


@pytest.mark.parametrize("kind, cls", [("diffusion", DiffusionConv2D),
                                       ("hyperbolic", HyperbolicConv2D)])
@pytest.mark.parametrize("k", [1, 3])
def test_structure_and_parameter_count(kind, cls, k):
    depth, width, h, w, c, classes = 5, 6, 8, 7, 2, 4
    model = pde_net((h, w, c), classes, depth=depth, width=width, kind=kind, kernel_size=k)
    pde = [layer for layer in model.layers if isinstance(layer, cls)]
    assert len(pde) == depth
    # Each K starts as the identity (centre tap = I).
    for layer in pde:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        np.testing.assert_array_equal(kernel[k // 2, k // 2], np.eye(width))
    if kind == "hyperbolic":
        assert [layer.return_state for layer in pde] == [True] * (depth - 1) + [False]
    # open 1×1 (+bias), depth K's (no bias), close 1×1 (+bias), dense on the flattened map.
    expected = (c * width + width) + depth * k * k * width * width + (width * width + width) \
        + (h * w * width * classes + classes)
    assert model.count_params() == expected


def test_avg_pooling_head_and_no_top():
    model = pde_net((8, 8, 1), 10, depth=2, width=4, pooling="avg")
    assert model.count_params() == (4 + 4) + 2 * 16 + (16 + 4) + (4 * 10 + 10)
    features = pde_net((8, 8, 1), depth=2, width=4, include_top=False)
    assert tuple(features.output.shape) == (None, 8, 8, 4)


def test_deep_hyperbolic_net_trains_and_reloads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    model = pde_net((6, 6, 1), 3, depth=12, width=4, kind="hyperbolic", diffusion_blend=True,
                    dropout=0.1)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    losses = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    harness.check_save_load(model, x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=0), "depth"),
    (dict(width=0), "width"),
    (dict(kind="wave"), "kind"),
    (dict(pooling="max"), "pooling"),
    (dict(dropout=1.0), "dropout"),
    (dict(step_size=-0.1), "step_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pde_net((8, 8, 1), 10, **kwargs)
