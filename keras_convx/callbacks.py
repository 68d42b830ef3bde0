"""Callbacks of keras_convx: `GradientFlow`, `Pruning`, `SynapticPruning`, `FocusArea`."""

import csv
import os

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import analysis
from keras_convx import fit_steps
from keras_convx import focus
from keras_convx.ops import focus as focus_ops
from keras_convx.pruning_callbacks import Pruning  # noqa: F401  (the pruning callbacks)
from keras_convx.pruning_callbacks import SynapticPruning  # noqa: F401

__all__ = ["FocusArea", "GradientFlow", "Pruning", "SynapticPruning"]


class GradientFlow(keras.callbacks.Callback):
    """Logs per-layer gradient norms and basis orthonormality during training.

    Every `every_n_steps` optimizer steps and at the end of every epoch (once, where the
    epoch's last step was just measured) the callback runs
    `keras_convx.analysis.gradient_flow` on a fixed batch `data` — one extra forward and
    backward pass, without updating anything — and records the task-loss gradient norm of
    every layer's own weights, of every shared `FilterBasis`, and each basis' orthonormality
    error ‖B Bᵀ − I‖²/s². Only those steps read the model (on JAX, reading the model forces a
    state sync, so `every_n_steps` keeps the cost bounded). Steps are the optimizer's
    (`keras_convx.fit_steps.FitSteps`), so a resumed run goes on counting where it stopped;
    with `steps_per_execution` > 1 the measurement is taken after the execution that reaches
    a multiple of `every_n_steps`, and recorded at that execution's last step.

    Where the numbers go:
    - `self.records`: a list of dicts `{"step", "epoch", "kind", "name", "value"}`
      (`step`: the optimizer's step count when measured);
    - the epoch logs (hence `History` and the progress bar): a few summaries of the
      end-of-epoch measurement, `grad_norm/min`, `grad_norm/median`, `grad_norm/max` over the
      layers and, when the model shares bases, `basis_grad_norm/max` and
      `orthonormality/max` (one key per layer would put ~70 keys on every epoch line of a
      ResNet-32);
    - `csv_path` (optional): every per-layer record appended as CSV rows;
    - `plot(path)`: gradient norm per layer (x: layer in model order), one line per record.

    Args:
        data: a batch `(x, y)` (kept small: it is run at every measurement).
        every_n_steps: int ≥ 1, the measurement period in optimizer steps (default 100).
        loss: the loss to differentiate; default the model's compiled loss.
        csv_path: optional path of a CSV file to write.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(16, 8, 8, 1), np.random.randint(0, 3, 16)
    >>> flow = keras_convx.callbacks.GradientFlow((x[:8], y[:8]), every_n_steps=1)
    >>> history = model.fit(x, y, epochs=2, callbacks=[flow], verbose=0)
    >>> sorted(k for k in history.history if k.startswith("grad_norm"))  # epoch summaries
    ['grad_norm/max', 'grad_norm/median', 'grad_norm/min']
    >>> sorted(flow.series()[1])       # per layer, at every measured step
    ['conv', 'head']
    >>> ax = flow.plot("gradient_flow.png")
    """

    FIELDS = ("step", "epoch", "kind", "name", "value")

    def __init__(self, data, every_n_steps=100, loss=None, csv_path=None):
        super().__init__()
        self.data = tuple(analysis.check_batch(data))
        self.every_n_steps = arguments.integer("every_n_steps", every_n_steps)
        self.loss = loss
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.records = []
        self.steps = fit_steps.FitSteps(self)
        self._step = 0  # the optimizer's step count after the latest execution
        self._epoch = 0
        self._last = (None, [])  # (step, rows) of the latest measurement

    def on_train_begin(self, logs=None):
        if self.csv_path:
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._step = self.steps.epoch_begin()

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
        self._last = (self._step, rows)
        return rows

    def on_train_batch_end(self, batch, logs=None):
        # measured after the execution that reaches a multiple of every_n_steps (with
        # steps_per_execution > 1 an execution may pass one: it is measured at its end)
        previous, self._step = self._step, self.steps.execution_end(batch)
        if self._step // self.every_n_steps > previous // self.every_n_steps:
            self._measure()

    def on_epoch_end(self, epoch, logs=None):
        # an epoch ending on a measured step reuses that step's rows (no duplicate records;
        # an epoch that ran no batch reuses the last rows too: the weights did not change)
        self._step = self.steps.optimizer_iterations()  # synced at an epoch's end
        step, rows = self._last
        if step != self._step:
            rows = self._measure()
        if logs is None:
            return
        for kind, stats in (("grad_norm", ("min", "median", "max")),
                            ("basis_grad_norm", ("max",)), ("orthonormality", ("max",))):
            values = [row["value"] for row in rows if row["kind"] == kind]
            for stat in stats if values else ():
                logs[f"{kind}/{stat}"] = float(getattr(np, stat)(values))

    def series(self, kind="grad_norm"):
        """{step: {name: value}} of the records of one kind."""
        out = {}
        for row in self.records:
            if row["kind"] == kind:
                out.setdefault(row["step"], {})[row["name"]] = row["value"]
        return out

    def plot(self, path=None, ax=None, kind="grad_norm"):
        """Plots `kind` per layer (model order), one line per measurement step; saves to
        `path` if given. Needs matplotlib. Returns the matplotlib Axes (on a Figure of its
        own unless `ax` is given: pyplot's backend and figures are left alone)."""
        from matplotlib.figure import Figure  # noqa: PLC0415

        if ax is None:  # a Figure of its own: pyplot's backend and figure list untouched
            ax = Figure(figsize=(6, 3.5)).subplots()
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


class FocusArea(keras.callbacks.Callback):
    """Logs the focus area of a classifier on fixed images at the end of every epoch.

    The focus area (Chen et al., NeurIPS 2021) is the fraction of an image whose normalised
    focus map (CAM, or Grad-CAM for other heads; see `keras_convx.analysis.focus_area`) is ≥ τ,
    averaged over `data`; the paper reports τ = 0.2 and 0.5. Works with a plain classifier
    and with a `keras_convx.training.PairwiseConsistency` wrapper (its inner model is
    explained).

    Logs (into History): `focus_area/<τ>` for every threshold. `self.records` lists
    `{"epoch", "thresholds": {τ: mean}}` per epoch, `self.maps` the latest maps (N, H, W) and
    `self.classes` the explained classes. `plot(path)` draws the images with their maps.

    Args:
        data: images (N, H, W, C) (or channels_first), or `(images, labels)`.
        thresholds: floats in (0, 1) (default (0.2, 0.5)).
        target: `"prediction"` (explain the top class, default) or `"label"` (needs labels).
        feature_layer, method, data_format: as in `keras_convx.analysis.focus_area`.
        batch_size: images per forward pass.
        plot_path: optional PNG path rewritten at the end of every epoch by `plot`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(16, 8, 8, 1), np.random.randint(0, 3, 16)
    >>> focus = keras_convx.callbacks.FocusArea(x[:4], plot_path="focus.png")
    >>> history = model.fit(x, y, epochs=2, callbacks=[focus], verbose=0)
    >>> len(history.history["focus_area/0.5"])   # one value per epoch
    2
    """

    def __init__(self, data, thresholds=(0.2, 0.5), target="prediction", feature_layer=None,
                 method="auto", data_format=None, batch_size=64, plot_path=None):
        super().__init__()
        if isinstance(data, (tuple, list)) and len(data) == 2:
            images, labels = data
            labels = np.asarray(labels)
        else:
            images, labels = data, None
        self.images = np.asarray(images)
        if self.images.ndim != 4:
            raise ValueError(
                f"Expected data to be a 4-D image batch or (images, labels). Received images "
                f"of shape {self.images.shape}"
            )
        if arguments.is_real(thresholds):
            thresholds = (thresholds,)
        if not isinstance(thresholds, (tuple, list)) or not thresholds:
            raise ValueError(
                "Expected thresholds to be a non-empty sequence of floats in (0, 1). Received: "
                f"thresholds={thresholds!r}"
            )
        self.thresholds = tuple(focus.check_threshold("thresholds", t) for t in thresholds)
        self.target = arguments.choice("target", target, ("prediction", "label"))
        if self.target == "label":
            if labels is None:
                raise ValueError("target='label' needs data=(images, labels).")
        self._labels = labels
        self.labels = None  # int classes, once the model's class count is known
        self.feature_layer = feature_layer
        self.method = arguments.choice("method", method, focus.FOCUS_METHODS)
        self.data_format = data_format
        self.batch_size = arguments.integer("batch_size", batch_size)
        self.plot_path = None if plot_path is None else os.fspath(plot_path)
        self.records = []
        self.maps = None
        self.classes = None
        self._plan = None

    def on_train_begin(self, logs=None):
        self._plan = focus.FocusPlan(self.model, self.feature_layer, self.method,
                                         self.data_format)
        if self.target == "label":  # checked before the first epoch trains
            self.labels = focus.check_classes("labels", keras.ops.convert_to_numpy(
                focus_ops.labels_to_classes(self._labels, self._plan.num_classes)),
                self._plan.num_classes)

    def measure(self):
        """Computes the maps now; returns {τ: mean focus area}."""
        if self._plan is None:
            self.on_train_begin()
        classes = self.labels if self.target == "label" else None
        self.maps, self.classes = focus.compute_focus_maps(
            self._plan, self.images, classes, self.batch_size)
        return {t: float(np.mean(self.maps >= t)) for t in self.thresholds}

    def on_epoch_end(self, epoch, logs=None):
        values = self.measure()
        self.records.append({"epoch": epoch, "thresholds": values})
        if logs is not None:
            for t, value in values.items():
                logs[f"focus_area/{t:g}"] = value
        if self.plot_path:
            self.plot(self.plot_path)

    def plot(self, path=None, num_images=8):
        """Images (top row) and their focus maps with the τ contours (bottom row) of the
        latest measurement; saves to `path` if given. Returns the matplotlib Figure."""
        from matplotlib.figure import Figure  # noqa: PLC0415

        if self.maps is None:
            self.measure()
        n = min(num_images, len(self.images))
        # a Figure of its own: pyplot's backend and figure list untouched (one per epoch
        # with plot_path would otherwise pile up there)
        fig = Figure(figsize=(1.6 * n, 3.4))
        axes = fig.subplots(2, n, squeeze=False)
        channels_first = arguments.data_format(self._plan.data_format) == "channels_first"
        for i in range(n):
            image = self.images[i]
            image = np.moveaxis(image, 0, -1) if channels_first else image
            image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
            low, high = float(image.min()), float(image.max())
            axes[0, i].imshow((image - low) / max(high - low, 1e-12), cmap="gray")
            axes[1, i].imshow(self.maps[i], cmap="jet", vmin=0, vmax=1)
            axes[1, i].contour(self.maps[i], levels=list(self.thresholds), colors="w",
                               linewidths=0.6)
            area = np.mean(self.maps[i] >= max(self.thresholds))
            axes[1, i].set_title(f"class {self.classes[i]}, {area:.2f}", fontsize=7)
            for ax in axes[:, i]:
                ax.axis("off")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig
