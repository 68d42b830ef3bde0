import keras
import numpy as np
import pytest

from keras_convx.applications import lpsc_resnet20
from keras_convx.layers import LogPolarConv2D


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Trainable parameters of the official PyTorch models (resnet_lpc / resnet_lpsc, depth 20,
# 10 classes), counted by hand from their layer list:
# stem tile conv (4,3) 3→16 + bias 592, centre conv 3→16 + bias 64, BN 32; stage 1 3×4,672;
# stage 2 14,528 + 2×18,560; stage 3 57,728 + 2×73,984; fc 650.
OFFICIAL_STEM = 592 + 64 + 32 + 3 * 4672 + 14528 + 2 * 18560 + 57728 + 2 * 73984 + 650
# CC: stem 3×3 3→8 216, tile conv 3→8 + bias 296, centre 3→8 + bias 32, BN 32; stage-1 blocks
# 3×(1,152 + 1,536 + 136 + 32 + 2,304 + 32); stages 2–3 and fc as above.
OFFICIAL_CC = 216 + 296 + 32 + 32 + 3 * 5192 + 14528 + 2 * 18560 + 57728 + 2 * 73984 + 650


def test_stem_variant_matches_official_parameter_count():
    model = lpsc_resnet20(num_classes=10)
    assert OFFICIAL_STEM == 272_698
    # One bias stands for the official stem's two (tile conv + centre conv): 16 fewer.
    assert _trainable(model) == OFFICIAL_STEM - 16
    stem = model.get_layer("stem_lpsc")
    assert isinstance(stem, LogPolarConv2D)
    assert (stem.kernel_size, stem.rings, stem.sectors, stem.growth_rate) == ((9, 9), 2, 6, 3.0)
    assert model.output_shape == (None, 10)


def test_cc_variant_matches_official_parameter_count():
    model = lpsc_resnet20(num_classes=10, variant="cc")
    assert _trainable(model) == OFFICIAL_CC - 8
    lpscs = [l for l in model.layers if isinstance(l, LogPolarConv2D)]
    assert len(lpscs) == 4 and all(l.kernel_size == (5, 5) for l in lpscs)


def test_trains_and_round_trips(tmp_path):
    model = lpsc_resnet20(input_shape=(16, 16, 3), num_classes=3, depth=8, variant="cc")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(4, 16, 16, 3).astype("float32")
    model.fit(x, np.arange(4) % 3, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [(dict(variant="xx"), "variant"), (dict(depth=21), "depth"),
                                           (dict(num_classes=0), "num_classes")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lpsc_resnet20(**kwargs)
