"""The Pallas kernels on a GPU: agreement with the XLA forms and op-level timings (not a test).

Run on a machine with a jax GPU (`python benchmarks/gpu_pallas.py --out DIR`). For the
benchmark suite's shapes it

- checks the fused log-polar pooling-and-mixing kernel against the dense convolution with
  the synthesised kernel (float32 at HIGHEST precision; the kernel's dots and XLA's default
  convolutions both use TF32 on Hopper, so the tolerance is TF32's), forward and gradients;
- checks the E4 aggregation kernels against the patch reference (elementwise float32),
  forward and gradients;
- times one forward + backward of each op (median of `--repeats`): the Pallas kernel, the
  XLA pooling then mixing (path B before the kernel), the dense path (A), Conv2D k×k and
  5×5 for the log-polar configurations; Pallas, jitted shifts and patches for E4.

Each failure is printed with its traceback and the script goes on; the result is
`pallas.json` in `--out`.
"""

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from keras_convx.ops import _pallas  # noqa: E402
from keras_convx.ops import group as gops  # noqa: E402
from keras_convx.ops import log_polar as lp  # noqa: E402

LPSC = [(9, 2, 6, 3.0), (11, 3, 8, 2.0)]
LPSC_CHANNELS = [(3, 16), (16, 16), (64, 64)]
LPSC_SHAPE = {"batch": 16, "size": 32}
INTERPRET = [False]
# (name, batch, size, M, A, k, stride)
E4 = [
    ("MNIST-rot sizes p4 16 fields k5 slices 2, stride 2", 16, 28, 8, 8, 5, 2),
    ("MNIST-rot block p4 16 fields k5 slices 2 (stride 1)", 16, 28, 8, 8, 5, 1),
    ("CIFAR block p4 32 fields k3 16 slices", 16, 32, 2, 64, 3, 1),
]


def median_ms(fn, args, repeats):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def train_step(f):
    """jitted value-and-gradient of sum(f(a, b)²) w.r.t. both inputs."""
    return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(jnp.square(f(a, b))), argnums=(0, 1)))


def time_each(row, fns, args, repeats):
    """row["ms"][name] = training-step ms of each fn (None, with the traceback kept, if it fails)."""
    ms = row.setdefault("ms", {})
    for name, f in fns:
        try:
            ms[name] = median_ms(train_step(f), args, repeats)
        except Exception:  # noqa: BLE001 - report and go on
            ms[name] = None
            row.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]


def report(row):
    print(json.dumps({k: v for k, v in row.items() if k not in ("error", "errors")}), flush=True)
    for err in [row.get("error")] + list(row.get("errors", {}).values()):
        if err:
            print(err, file=sys.stderr, flush=True)


def conv_valid(x, kernel, precision=None):
    """Stride-1 "valid" NHWC/HWIO convolution (the dense path and the Conv2D baselines)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", precision=precision,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def xla_pool_then_mix(offsets, k):
    """Path B as XLA runs it by default: jitted slice pooling, then one contraction."""
    def f(xp, w):
        pooled = lp.pool_by_slices(xp, None, (k, k), (1, 1), "mean", offsets=offsets)
        return jnp.einsum("bhwrc,rcn->bhwn", pooled, w)

    return f


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def lpsc_rows(repeats):
    rows = []
    rng = np.random.default_rng(0)
    for k, rings, sectors, growth in LPSC:
        pm = lp.pooling_matrix((k, k), rings, sectors, growth, 0.0, "mean", True)
        offsets = lp.region_offsets(pm)
        fused = _pallas.pool_mix_fn(offsets, (k, k), INTERPRET[0])
        pm32 = jnp.asarray(pm, jnp.float32)

        def dense(xp, w, precision=None):
            kern = jnp.einsum("qr,rcn->qcn", pm32, w, precision=precision).reshape(k, k, *w.shape[1:])
            return conv_valid(xp, kern, precision)

        pool_then_mix = xla_pool_then_mix(offsets, k)

        for cin, cout in LPSC_CHANNELS:
            row = {"op": "lpsc", "k": k, "regions": [rings, sectors, growth], "cin": cin, "cout": cout}
            b, n = LPSC_SHAPE["batch"], LPSC_SHAPE["size"]
            xp = jnp.asarray(rng.standard_normal((b, n + k - 1, n + k - 1, cin)), jnp.float32)
            w = jnp.asarray(rng.standard_normal((pm.shape[1], cin, cout)) / np.sqrt(cin * pm.shape[1]),
                            jnp.float32)
            try:
                exact = jax.jit(lambda a, b: dense(a, b, jax.lax.Precision.HIGHEST))
                row["fwd_rel_err"] = rel(jax.jit(fused)(xp, w), exact(xp, w))
                gf = train_step(fused)(xp, w)[1]
                ge = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.square(exact(a, b))), argnums=(0, 1)))(xp, w)
                row["grad_x_rel_err"], row["grad_w_rel_err"] = rel(gf[0], ge[0]), rel(gf[1], ge[1])
                row["default_dense_fwd_rel_err"] = rel(jax.jit(dense)(xp, w), exact(xp, w))
            except Exception:  # noqa: BLE001 - report and go on
                row["error"] = traceback.format_exc()
            time_each(row, (("pallas", fused), ("xla_pool_mix", pool_then_mix), ("dense", dense)),
                      (xp, w), repeats)
            for kk in (k, 5):
                kern = jnp.asarray(rng.standard_normal((kk, kk, cin, cout)) * 0.01, jnp.float32)
                time_each(row, ((f"conv{kk}", conv_valid),), (xp[:, : n + kk - 1, : n + kk - 1], kern), repeats)
            rows.append(row)
            report(row)
    return rows


def e4_rows(repeats):
    rows = []
    rng = np.random.default_rng(1)
    for name, batch, size, m, a, k, s in E4:
        oh = -(-size // s)
        v = jnp.asarray(rng.standard_normal((batch, size, size, m, a)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((batch, oh, oh, k * k, a)), jnp.float32)
        pallas = _pallas.aggregate_fn(k, (s, s), INTERPRET[0])
        patches = lambda a_, b_: gops.aggregate_patches(a_, b_, k, (s, s))  # noqa: E731
        shifts = lambda a_, b_: gops.aggregate_shifts(a_, b_, k, (s, s))  # noqa: E731
        row = {"op": "e4_aggregate", "case": name}
        try:
            row["fwd_rel_err"] = rel(jax.jit(pallas)(v, kern), jax.jit(patches)(v, kern))
            gp, gr = train_step(pallas)(v, kern)[1], train_step(patches)(v, kern)[1]
            row["grad_v_rel_err"], row["grad_k_rel_err"] = rel(gp[0], gr[0]), rel(gp[1], gr[1])
        except Exception:  # noqa: BLE001
            row["error"] = traceback.format_exc()
        time_each(row, (("pallas", pallas), ("shifts", shifts), ("patches", patches)), (v, kern), repeats)
        rows.append(row)
        report(row)
    return rows


def breakdown_rows(repeats):
    """Where the time goes: forward-only times, the backward's parts, launch settings."""
    rows = []
    rng = np.random.default_rng(2)
    b, n = LPSC_SHAPE["batch"], LPSC_SHAPE["size"]
    settings = [(2, 32), (4, 16), (4, 32), (8, 32)]
    for k, rings, sectors, growth in LPSC:
        pm = lp.pooling_matrix((k, k), rings, sectors, growth, 0.0, "mean", True)
        offsets = lp.region_offsets(pm)
        cin = cout = 64 if not INTERPRET[0] else 3
        xp = jnp.asarray(rng.standard_normal((b, n + k - 1, n + k - 1, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((pm.shape[1], cin, cout)) * 0.05, jnp.float32)
        dy = jnp.asarray(rng.standard_normal((b, n, n, cout)), jnp.float32)
        ms = {}
        regions = _pallas.region_taps(offsets, (k, k))
        flipped = _pallas.region_taps(offsets, (k, k), flip=True)
        for warps, tile in settings:
            _pallas.TUNING.update(num_warps=warps, max_col_tile=tile)
            try:
                fwd = jax.jit(lambda a, c: _pallas._padded_call(a, _pallas._slot_weights(c, regions), regions,
                                                            (k, k), n, n, INTERPRET[0]))
                ms[f"pallas_fwd_w{warps}_t{tile}"] = median_ms(fwd, (xp, w), repeats)
                dyp = jnp.pad(dy, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
                dx = jax.jit(lambda a, c: _pallas._padded_call(
                    a, _pallas._slot_weights(c, flipped, transpose=True), flipped, (k, k),
                    n + k - 1, n + k - 1, INTERPRET[0]))
                ms[f"pallas_dx_w{warps}_t{tile}"] = median_ms(dx, (dyp, w), repeats)
            except Exception:  # noqa: BLE001
                print(traceback.format_exc()[-1500:], file=sys.stderr, flush=True)
        _pallas.TUNING.update(num_warps=4, max_col_tile=64)
        ms["xla_dw"] = median_ms(jax.jit(lambda a, g: jnp.einsum(
            "bhwrc,bhwn->rcn", lp.pool_by_slices(a, None, (k, k), (1, 1), "sum", offsets=offsets), g)),
            (xp, dy), repeats)
        ms["xla_pool_mix_fwd"] = median_ms(jax.jit(xla_pool_then_mix(offsets, k)), (xp, w), repeats)
        for kk in (k, 5):
            kern = jnp.asarray(rng.standard_normal((kk, kk, cin, cout)) * 0.01, jnp.float32)
            ms[f"conv{kk}_fwd"] = median_ms(jax.jit(conv_valid), (xp[:, : n + kk - 1, : n + kk - 1], kern), repeats)
        rows.append({"op": "lpsc_breakdown", "k": k, "cin": cin, "cout": cout, "ms": ms})
        print(json.dumps(rows[-1]), flush=True)
    for name, batch, size, m, a, k, s in E4:
        oh = -(-size // s)
        v = jnp.asarray(rng.standard_normal((batch, size, size, m, a)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((batch, oh, oh, k * k, a)), jnp.float32)
        ms = {}
        for warps, tile in [(1, 32), (2, 32), (4, 32), (4, 16)]:
            _pallas.TUNING.update(num_warps=warps, max_col_tile=tile)
            _pallas.aggregate_fn.cache_clear()
            f = _pallas.aggregate_fn(k, (s, s), INTERPRET[0])
            try:
                ms[f"pallas_fwd_w{warps}_t{tile}"] = median_ms(jax.jit(f), (v, kern), repeats)
                ms[f"pallas_step_w{warps}_t{tile}"] = median_ms(train_step(f), (v, kern), repeats)
            except Exception:  # noqa: BLE001
                print(traceback.format_exc()[-1500:], file=sys.stderr, flush=True)
        _pallas.TUNING.update(num_warps=4, max_col_tile=64)
        _pallas.aggregate_fn.cache_clear()
        ms["patches_fwd"] = median_ms(jax.jit(lambda a_, b_: gops.aggregate_patches(a_, b_, k, (s, s))),
                                      (v, kern), repeats)
        ms["shifts_fwd"] = median_ms(jax.jit(lambda a_, b_: gops.aggregate_shifts(a_, b_, k, (s, s))),
                                     (v, kern), repeats)
        rows.append({"op": "e4_breakdown", "case": name, "ms": ms})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=".")
    parser.add_argument("--only", choices=["lpsc", "e4", "breakdown"], default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes in Pallas' interpreter: checks the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        INTERPRET[0] = True
        LPSC_SHAPE.update(batch=1, size=6)
        LPSC_CHANNELS[:] = LPSC_CHANNELS[:1]
        E4[:] = [(name, 1, 6, m, a, k, s) for name, _, _, m, a, k, s in E4]
    print("devices:", jax.devices(), "jax", jax.__version__, flush=True)
    rows = []
    if args.only in (None, "e4"):
        rows += e4_rows(args.repeats)
    if args.only in (None, "lpsc"):
        rows += lpsc_rows(args.repeats)
    if args.only == "breakdown":
        rows += breakdown_rows(args.repeats)
    result = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": rows}
    with open(os.path.join(args.out, "pallas.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
