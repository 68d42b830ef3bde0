"""The oracles' analytic VJPs (tests/oracles/adjoint.py) against central differences of their
own forwards, every coordinate, on tiny shapes. NumPy only (run once, on one backend).

A VJP that drops a term (a planted `- direction * (...)` removed in the synaptic VJP, a
missing ÷|region| in the log-polar one, or the lifting kernel's cotangent summed to the wrong
source) fails here before it could vouch for a layer.
"""

import keras
import numpy as np
import pytest

from tests import harness
from tests.oracles import adjoint
from tests.oracles import group as group_oracle
from tests.oracles import log_polar as lp_oracle
from tests.oracles import synaptic as syn_oracle

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="backend-independent NumPy: run once, on tensorflow")


def _rng(seed):
    return np.random.default_rng(seed)


def _check(forward, vjp, x, weights, atol=1e-6):
    """vjp(x, weights, cot) against central differences of sum(cot · forward) (float64)."""
    names = list(weights)
    y = forward(x, weights)
    cot = _rng(9).standard_normal(y.shape)
    dx, grads = vjp(x, weights, cot)
    assert set(grads) == set(names)

    def f(x_, *ws):
        return forward(x_, dict(zip(names, ws)))

    arrays = [x, *[weights[n] for n in names]]
    for i, (name, got) in enumerate([("x", dx)] + [(n, grads[n]) for n in names]):
        expected = harness.finite_difference_gradient(f, arrays, i, cot)
        np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("strides, padding", [((1, 1), "same"), ((2, 1), "same"),
                                              ((2, 2), "valid")])
def test_correlate_vjp(strides, padding):
    x, w = _rng(0).standard_normal((2, 6, 5, 2)), _rng(1).standard_normal((3, 3, 2, 3))
    _check(lambda x_, ws: group_oracle.correlate(x_, ws["w"], strides, padding),
           lambda x_, ws, c: (lambda d: (d[0], {"w": d[1]}))(
               adjoint.correlate_vjp(x_, ws["w"], c, strides, padding)),
           x, {"w": w})


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("lifting", [True, False])
def test_group_conv_vjp(group, lifting):
    n = group_oracle.order(group)
    channels = 2 if lifting else 1 * n
    x = _rng(0).standard_normal((1, 5, 5, channels))
    weights = {"kernel": _rng(1).standard_normal((3, 3, channels, 2)),
               "bias": _rng(2).standard_normal(2)}
    forward = group_oracle.lift_conv if lifting else group_oracle.group_conv
    _check(lambda x_, ws: forward(x_, ws, group, (2, 2), "same"),
           lambda x_, ws, c: adjoint.group_conv_vjp(x_, ws, c, group, lifting, (2, 2), "same"),
           x, weights)


@pytest.mark.parametrize("kwargs", [dict(padding="same"), dict(padding="valid", stride=2),
                                    dict(padding="same", groups=2, dilation=2)])
def test_synaptic_conv_vjp(kwargs):
    x = _rng(0).standard_normal((1, 6, 6, 4))
    groups = kwargs.get("groups", 1)
    shape = (3, 3, 4 // groups, 4)
    mask = (_rng(3).uniform(size=shape[2:]) > 0.3).astype(float)
    weights = {"direction": _rng(1).standard_normal(shape),
               "strength": _rng(2).uniform(0.5, 2.0, shape[2:]),
               "bias": _rng(4).standard_normal(4)}

    def forward(x_, ws):
        return syn_oracle.synaptic_conv(x_, ws["direction"], ws["strength"], mask, ws["bias"],
                                        **kwargs)

    def vjp(x_, ws, c):
        return adjoint.synaptic_conv_vjp(x_, ws["direction"], ws["strength"], mask, ws["bias"],
                                         c, **kwargs)

    _check(forward, vjp, x, weights)


@pytest.mark.parametrize("kwargs", [
    dict(strides=1, padding="same", pooling="mean"),
    dict(strides=2, padding="valid", pooling="sum", groups=2),
    dict(strides=(2, 1), padding="same", pooling="mean", data_format="channels_first"),
])
def test_lpsc_vjp(kwargs):
    geometry = dict(kernel_size=5, rings=2, sectors=4, growth_rate=2.0)
    groups = kwargs.get("groups", 1)
    shape = (1, 4, 7, 6) if kwargs.get("data_format") == "channels_first" else (1, 7, 6, 4)
    x = _rng(0).standard_normal(shape)
    weights = {"kernel": _rng(1).standard_normal((2, 4, 4 // groups, 2)),
               "center_kernel": _rng(2).standard_normal((4 // groups, 2)),
               "bias": _rng(3).standard_normal(2)}
    _check(lambda x_, ws: lp_oracle.lpsc(x_, ws, **geometry, **kwargs),
           lambda x_, ws, c: adjoint.lpsc_vjp(x_, ws, c, **geometry, **kwargs),
           x, weights)
