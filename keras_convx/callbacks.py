"""Callbacks of keras_convx: `GradientFlow` (issue 5); SynapticPruning and FocusArea follow
(issues 7, 8)."""

import csv
import os

import keras

from keras_convx import analysis
from keras_convx.layers import _common

__all__ = ["GradientFlow"]


class GradientFlow(keras.callbacks.Callback):
    """Logs per-layer gradient norms and basis orthonormality during training.

    Every `every_n_steps` optimizer steps (and at the end of every epoch) the callback runs
    `keras_convx.analysis.gradient_flow` on a fixed batch `data` — one extra forward and
    backward pass, without updating anything — and records the task-loss gradient norm of
    every layer's own weights, of every shared `FilterBasis`, and each basis' orthonormality
    error ‖B Bᵀ − I‖²/s². Only those steps read the model (on JAX, reading the model forces a
    state sync, so `every_n_steps` keeps the cost bounded).

    Where the numbers go:
    - `self.records`: a list of dicts `{"step", "epoch", "kind", "name", "value"}`;
    - the epoch logs (hence `History`): `grad_norm/<layer>`, `basis_grad_norm/<basis>` and
      `orthonormality/<basis>` from the end-of-epoch measurement;
    - `csv_path` (optional): the records appended as CSV rows;
    - `plot(path)`: gradient norm per layer (x: layer in model order), one line per record.

    Args:
        data: a batch `(x, y)` (kept small: it is run at every measurement).
        every_n_steps: int ≥ 1, the measurement period in optimizer steps (default 100).
        loss: the loss to differentiate; default the model's compiled loss.
        csv_path: optional path of a CSV file to write.

    Example:

    >>> flow = keras_convx.callbacks.GradientFlow((x[:128], y[:128]), every_n_steps=50)
    >>> model.fit(x, y, epochs=5, callbacks=[flow])
    >>> history.history["grad_norm/block_3"]          # one value per epoch
    >>> flow.plot("gradient_flow.png")
    """

    FIELDS = ("step", "epoch", "kind", "name", "value")

    def __init__(self, data, every_n_steps=100, loss=None, csv_path=None):
        super().__init__()
        self.data = tuple(analysis.check_batch(data))
        self.every_n_steps = _common.integer("every_n_steps", every_n_steps)
        self.loss = loss
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.records = []
        self._step = 0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        if self.csv_path:
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _measure(self):
        flow = analysis.gradient_flow(self.model, self.data, loss=self.loss)
        rows = []
        for kind, key in (
            ("grad_norm", "gradient_norms"),
            ("basis_grad_norm", "basis_gradient_norms"),
            ("orthonormality", "orthonormality"),
        ):
            for name, value in flow[key].items():
                rows.append(
                    {"step": self._step, "epoch": self._epoch, "kind": kind, "name": name,
                     "value": value}
                )
        self.records.extend(rows)
        if self.csv_path:
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.FIELDS)
                writer.writerows(rows)
        return rows

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps == 0:
            self._measure()

    def on_epoch_end(self, epoch, logs=None):
        rows = self._measure()
        if logs is not None:
            for row in rows:
                logs[f"{row['kind']}/{row['name']}"] = row["value"]

    def series(self, kind="grad_norm"):
        """{step: {name: value}} of the records of one kind."""
        out = {}
        for row in self.records:
            if row["kind"] == kind:
                out.setdefault(row["step"], {})[row["name"]] = row["value"]
        return out

    def plot(self, path=None, ax=None, kind="grad_norm"):
        """Plots `kind` per layer (model order), one line per measurement step; saves to
        `path` if given. Needs matplotlib. Returns the matplotlib Axes."""
        import matplotlib  # noqa: PLC0415

        if ax is None:
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415

            _, ax = plt.subplots(figsize=(6, 3.5))
        series = self.series(kind)
        for step, values in sorted(series.items()):
            ax.plot(range(len(values)), list(values.values()), marker="o", ms=3,
                    label=f"step {step}")
        ax.set_yscale("log")
        ax.set_xlabel("layer (model order)")
        ax.set_ylabel(kind.replace("_", " "))
        if series:
            ax.legend(fontsize=7)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=120)
        return ax
