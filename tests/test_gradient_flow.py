"""analysis.gradient_flow and callbacks.GradientFlow."""

import csv
import os

import keras
import numpy as np
import pytest

from keras_convx import analysis
from keras_convx import callbacks
from keras_convx.layers import FilterBasis
from keras_convx.layers import SharedBasisConv2D
from tests import harness


def _dense_model():
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="d1")(x)
    y = keras.layers.Dense(2, name="d2")(h)
    return keras.Model(x, y)


def test_gradient_norms_match_the_analytic_gradient():
    model = _dense_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype("float32")
    y = rng.standard_normal((5, 2)).astype("float32")
    flow = analysis.gradient_flow(model, (x, y), loss="mse")
    w1, b1, w2, b2 = (harness.to_numpy(v).astype(np.float64) for v in model.trainable_weights)
    h = x @ w1 + b1
    r = h @ w2 + b2 - y
    d_out = 2.0 * r / r.size  # d mean((out - y)²)
    g_w2, g_b2 = h.T @ d_out, d_out.sum(0)
    d_h = d_out @ w2.T
    g_w1, g_b1 = x.T @ d_h, d_h.sum(0)
    np.testing.assert_allclose(flow["loss"], np.mean(r**2), rtol=1e-5)
    np.testing.assert_allclose(flow["gradient_norms"]["d1"],
                               np.sqrt(np.sum(g_w1**2) + np.sum(g_b1**2)), rtol=1e-4)
    np.testing.assert_allclose(flow["gradient_norms"]["d2"],
                               np.sqrt(np.sum(g_w2**2) + np.sum(g_b2**2)), rtol=1e-4)
    assert list(flow["gradient_norms"]) == ["d1", "d2"]


def _shared_model():
    basis = FilterBasis(2, 3)
    x = keras.Input((5, 5, 3))
    h = SharedBasisConv2D(3, basis, name="c1")(x)
    h = SharedBasisConv2D(3, basis, name="c2")(h)
    y = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(x, y), basis


def test_shared_basis_is_reported_once_and_state_is_untouched():
    model, basis = _shared_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 5, 3)).astype("float32")
    y = rng.integers(0, 2, 4)
    before = [harness.to_numpy(v).copy() for v in model.weights]
    flow = analysis.gradient_flow(
        model, (x, y), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert set(flow["gradient_norms"]) == {"c1", "c2", "head"}
    assert set(flow["basis_gradient_norms"]) == {basis.name}
    assert flow["basis_gradient_norms"][basis.name] > 0
    assert flow["orthonormality"][basis.name] < 1e-6  # orthogonal init
    for b, a in zip(before, model.weights):  # moving statistics included
        np.testing.assert_array_equal(b, harness.to_numpy(a))


def test_callback_logs_history_csv_and_plot(tmp_path):
    model, basis = _shared_model()
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 5, 5, 3)).astype("float32")
    y = rng.integers(0, 2, 16)
    path = os.path.join(tmp_path, "flow.csv")
    flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=3, csv_path=path)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[flow])
    summaries = {"grad_norm/min", "grad_norm/median", "grad_norm/max", "basis_grad_norm/max",
                 "orthonormality/max"}
    assert set(history.history) == {"loss"} | summaries  # no key per layer
    for key in summaries:
        assert len(history.history[key]) == 2 and all(v >= 0 for v in history.history[key])
    # the summaries are those of the end-of-epoch per-layer records
    last = flow.series("grad_norm")[8]
    assert history.history["grad_norm/max"][-1] == pytest.approx(max(last.values()))
    assert history.history["grad_norm/min"][-1] == pytest.approx(min(last.values()))
    # 8 steps: measured at steps 3 and 6, and at the end of both epochs (steps 4 and 8).
    assert sorted(flow.series("grad_norm")) == [3, 4, 6, 8]
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(flow.records) == 4 * 5
    png = os.path.join(tmp_path, "flow.png")
    flow.plot(png)
    assert os.path.getsize(png) > 0
    # an epoch that ends on a measured step is measured once (the step's records, logged);
    # steps are the optimizer's: this model has run 8 already
    flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=2)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[flow])
    assert [r["step"] for r in flow.records if r["name"] == "head"] == [10, 12, 14, 16]
    assert history.history["grad_norm/max"][-1] == pytest.approx(
        max(flow.series("grad_norm")[16].values()))
    # a second fit with the same callback counts on: two more steps, measured at 18 (once)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[flow])
    assert [r["step"] for r in flow.records if r["name"] == "head"] == [10, 12, 14, 16, 18]
    assert history.history["grad_norm/max"] == [pytest.approx(
        max(flow.series("grad_norm")[18].values()))]


def test_bad_arguments():
    with pytest.raises(ValueError, match="data"):
        callbacks.GradientFlow(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="every_n_steps"):
        callbacks.GradientFlow((np.zeros((2, 4)), np.zeros((2, 2))), every_n_steps=0)
    with pytest.raises(ValueError, match="loss="):
        analysis.gradient_flow(_dense_model(), (np.zeros((2, 4)), np.zeros((2, 2))))
    with pytest.raises(ValueError, match="data"):
        analysis.gradient_flow(_dense_model(), np.zeros((2, 4)), loss="mse")


def _classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(h))


def test_a_pairwise_consistency_wrapper_reports_its_classifier():
    """GradientFlow on `PairwiseConsistency` (whose training call returns the outputs with
    the feature map) measures the classifier's task loss: the same numbers as on the
    classifier compiled with that loss (it used to hand the pair to the loss and fail)."""
    from keras_convx.training import PairwiseConsistency

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 2, 8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    classifier = _classifier()
    wrapper = PairwiseConsistency(classifier)
    wrapper.compile("sgd", loss)
    got = analysis.gradient_flow(wrapper, (x, y))
    expected = analysis.gradient_flow(classifier, (x, y), loss=loss)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert list(got["gradient_norms"]) == ["conv", "head"]
    for name, value in expected["gradient_norms"].items():
        assert got["gradient_norms"][name] == pytest.approx(value, rel=1e-5)
    flow = callbacks.GradientFlow((x[:4], y[:4]), every_n_steps=1)
    wrapper.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[flow])
    assert sorted(flow.series()) == [1, 2]


def test_several_losses_are_refused_by_name():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(1)(inputs)])
    model.compile("sgd", ["mse", "mse"])
    data = (np.zeros((2, 4)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one loss of a single-output model.*2 outputs"):
        analysis.gradient_flow(model, data)
    with pytest.raises(TypeError, match="loss="):
        analysis.gradient_flow(_dense_model(), data, loss=3)
