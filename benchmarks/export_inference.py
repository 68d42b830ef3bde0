"""Inference time of exported files (ONNX Runtime, LiteRT) against Keras predict.

Usage: python benchmarks/export_inference.py [--backends jax tensorflow torch] [--repeats 50]

For each backend (a process of its own): the guide's every-family digits CNN
(guides/export_and_deploy.py, 16×16×1, random weights) and the demo's plain Conv2D CNN of
the same input, each folded and exported to ONNX and LiteRT with `keras_convx.export`, then
timed at batch 1 and 32 (median of `--repeats` calls after warm-up): `model.predict`,
`model.predict_on_batch`, ONNX Runtime, the LiteRT interpreter. Ratios are against
`model.predict` of the same model in the same process. The section between the
"export-inference" markers of benchmarks/RESULTS_HEADER.md is rewritten, then RESULTS.md
re-rendered (`run.py --render`).
"""

import datetime
import json
import os
import platform
import sys
import tempfile

import sections  # noqa: E402  (benchmarks/sections.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- export-inference:begin -->", "<!-- export-inference:end -->"
RUNNERS = ("Keras predict", "Keras predict_on_batch", "ONNX Runtime", "LiteRT")


def worker(repeats):
    sys.path[:0] = [os.path.join(ROOT, "guides"), ROOT]
    import export_and_deploy as guide
    import keras
    import numpy as np

    from keras_convx import demo
    from keras_convx import export

    keras.utils.set_random_seed(0)
    models = {
        "every-family CNN": guide.every_family_cnn(),
        "plain Conv2D CNN": demo.plain_cnn(input_shape=(guide.SIZE, guide.SIZE, 1)),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, model in models.items():
            model(np.zeros((1, guide.SIZE, guide.SIZE, 1), "float32"))
            files, _ = guide.export_both(model, folder)
            runtimes = {label: export.runtime(path) for label, path in files.items()}
            times = guide.inference_times(model, runtimes, repeats=repeats)
            rows.append({"model": label, "ms": times})
            print(f"# {keras.backend.backend()} {label}: {times}", file=sys.stderr, flush=True)
    print(json.dumps(rows))


def _section(results):
    lines = [
        BEGIN,
        f"## Exported inference vs Keras predict (run of {datetime.date.today()}, "
        f"{os.cpu_count()}-core {platform.machine()})",
        "",
        "Written by `python benchmarks/export_inference.py`. Folded model exported by "
        "`keras_convx.export`, 16×16×1 input, median ms per call; ratios against "
        "`model.predict` of the same model, same process. every-family CNN = "
        "guides/export_and_deploy.py's model (a layer of every family); plain = the demo's "
        "3-block Conv2D CNN.",
        "",
        "| backend | model | batch | predict ms | predict_on_batch | ONNX Runtime | LiteRT |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, rows in results.items():
        for row in rows:
            for batch in ("1", "32"):
                ms = {name: row["ms"][name][batch] for name in RUNNERS}
                base = ms["Keras predict"]
                cells = [f"{ms[name]:.2f} ({ms[name] / base:.3f}×)" for name in RUNNERS[1:]]
                lines.append(f"| {backend} | {row['model']} | {batch} | {base:.2f} | "
                             + " | ".join(cells) + " |")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    sections.main(__file__, worker, _section, BEGIN, END, default_repeats=50)
