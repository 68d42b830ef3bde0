"""Training schemes: pairwise consistency learning (Chen et al., NeurIPS 2021)."""

import copy

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import focus
from keras_convx import keras_compat
from keras_convx._registry import register
from keras_convx.ops import core as ops_core
from keras_convx.ops import focus as focus_ops

__all__ = ["PairwiseConsistency"]

FILLS = ("zero", "mean")


def _fill_value(fill):
    if isinstance(fill, str):
        return arguments.choice("fill", fill, FILLS)
    values = np.asarray(fill, dtype="float32") if not isinstance(fill, bool) else None
    if values is None or values.ndim > 1 or not np.all(np.isfinite(values)):
        raise ValueError(
            f"Expected fill to be one of {list(FILLS)}, a number or a per-channel sequence of "
            f"numbers. Received: fill={fill!r}"
        )
    return float(values) if values.ndim == 0 else [float(v) for v in values]


def _non_negative(name, value):
    return arguments.number(name, value, 0)


@register
class PairwiseConsistency(keras.Model):
    """Pairwise consistency learning: train a classifier to see more of each image.

    Chen et al., "See More for Scene: Pairwise Consistency Learning for Scene
    Classification" (NeurIPS 2021) observe that scene classifiers do better when their
    decision rests on a large part of the image (a large focus area). This wrapper trains
    `model` with, for each training image x of label y:

    1. the focus map M of x for its label y (CAM, or Grad-CAM for heads that are not
       global-average-pool + dense; see `keras_convx.analysis.focus_area`), normalised to
       [0, 1] at the image size, computed from the same forward pass and without gradient;
    2. the erased image `x' = x ⊙ (1 − E) + fill · E`, `E = 1[M ≥ erase_threshold]` (or the
       bounding box of that set), which hides what the network already looks at;
    3. the loss `L(z, y) + β · L(z', y) + λ · mean D(p ‖ p')`, where L is the loss given to
       `compile` (also used for the erased view), z and z' the outputs on x and x', p and p'
       their class probabilities, and D the KL divergence restricted to the category-relevant
       classes of each image (the top-k of p together with y, renormalised over them; or all
       classes).

    It is a plain `keras.Model`: `compile` and `fit` work unchanged on TensorFlow, JAX and
    PyTorch (the scheme lives in `compute_loss`, no per-backend train step), and
    `fit(..., validation_data=...)` reports the same terms on validation data. `History`
    gets `erased_loss` (β · L(z', y)), `consistency` (λ · D) and `erased_area` (the mean
    erased fraction). Inference is the wrapped model unchanged: `predict`/`evaluate`'s
    outputs are `model`'s, and `wrapper.model` is the trained classifier to save or export
    on its own (the wrapper saves and loads as a `.keras` file too).

    The erased view's forward pass runs in training mode (batch statistics of the erased
    batch) but its state updates are discarded, so batch-norm moving statistics describe
    clean images only.

    Args:
        model: a Functional or Sequential classifier with one 4-D image input and one
            (batch, classes) output and a spatial feature map before its head.
        erase_threshold: τ in (0, 1): pixels whose focus value is ≥ τ are erased
            (default 0.5).
        erased_weight: β ≥ 0, the weight of the erased view's loss (default 1.0).
        consistency_weight: λ ≥ 0, the weight of the consistency term (default 1.0).
        relevance: `"top_k"` (default: the top `top_k` classes of p plus the label) or `"all"`
            (the full KL divergence).
        top_k: int ≥ 1, the size of the relevant set for `relevance="top_k"` (default 5).
        fill: what replaces erased pixels: `"zero"` (default), `"mean"` (the batch's
            per-channel mean, a stand-in for the dataset mean), a number or a per-channel
            sequence (e.g. the dataset mean).
        region: `"mask"` (erase exactly the thresholded pixels, default) or `"box"` (their
            bounding box).
        target: the class whose focus map is erased in training: `"label"` (the ground
            truth, default) or `"prediction"` (the top class).
        from_logits: whether `model` outputs logits; default (None) inferred from the model
            (a softmax at the end means probabilities).
        feature_layer: name of the layer whose output the focus map explains (default: found
            from the head, see `analysis.focus_area`).
        method: `"auto"`, `"cam"` or `"grad_cam"`.
        data_format: of the images; default: the one the model's layers use (a ValueError
            asks for it when they mix formats), else Keras' setting.
        **kwargs: `keras.Model` arguments (e.g. `name`).

    Example:

    ```python
    classifier = keras_convx.demo.plain_cnn((32, 32, 3), num_classes=8)
    wrapper = keras_convx.training.PairwiseConsistency(classifier, erase_threshold=0.5)
    wrapper.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    wrapper.fit(x_train, y_train, epochs=10, validation_data=(x_test, y_test))
    classifier.save("scene_classifier.keras")  # the trained model, no wrapper needed
    ```
    """

    def __init__(self, model, erase_threshold=0.5, erased_weight=1.0, consistency_weight=1.0,
                 relevance="top_k", top_k=5, fill="zero", region="mask", target="label",
                 from_logits=None, feature_layer=None, method="auto", data_format=None,
                 **kwargs):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected model to be a keras.Model. Received: model={model!r}")
        self.erase_threshold = focus.check_threshold("erase_threshold", erase_threshold)
        self.erased_weight = _non_negative("erased_weight", erased_weight)
        self.consistency_weight = _non_negative("consistency_weight", consistency_weight)
        self.relevance = arguments.choice("relevance", relevance, focus_ops.RELEVANCE)
        self.top_k = arguments.integer("top_k", top_k)
        self.fill = _fill_value(fill)
        self.region = arguments.choice("region", region, focus_ops.REGIONS)
        self.target = arguments.choice("target", target, focus_ops.TARGETS)
        if from_logits is not None:
            from_logits = arguments.boolean("from_logits", from_logits)
        self.feature_layer = feature_layer
        plan = focus.FocusPlan(model, feature_layer, method, data_format)  # validates
        self.method = method
        self.data_format = plan.data_format
        self._from_logits_arg = from_logits
        self.from_logits = (not plan.probabilities) if from_logits is None else from_logits
        super().__init__(**kwargs)
        self.model = model
        # Shares the model's layers; kept out of Keras' tracking (its variables are model's).
        object.__setattr__(self, "_plan", plan)
        self.erased_loss_tracker = keras.metrics.Mean(name="erased_loss")
        self.consistency_tracker = keras.metrics.Mean(name="consistency")
        self.erased_area_tracker = keras.metrics.Mean(name="erased_area")
        self.built = True

    @property
    def focus_model(self):
        """The wrapped classifier (what `analysis.focus_area` explains)."""
        return self.model

    def call(self, inputs, training=None):
        """The wrapped model's outputs. With `training=True` it returns the pair
        `(outputs, feature_map)` so that `compute_loss` builds the focus map from the same
        forward pass; `compute_loss` and `compute_metrics` accept both forms."""
        if not training:
            return self.model(inputs, training=training)
        features, outputs = self._plan.features_model(inputs, training=True)
        return outputs, features

    def _probabilities(self, outputs):
        outputs = keras.ops.cast(outputs, "float32")
        return keras.ops.softmax(outputs, axis=-1) if self.from_logits else outputs

    def _fill_for(self, x):
        if self.fill == "zero":
            return 0.0
        if self.fill == "mean":
            axes = (0, 1, 2) if self.data_format == "channels_last" else (0, 2, 3)
            return keras.ops.stop_gradient(keras.ops.mean(x, axis=axes))
        return keras.ops.convert_to_tensor(self.fill, dtype=x.dtype)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if keras_compat.compile_loss(self) is None:
            raise ValueError(
                "PairwiseConsistency needs the classification loss: compile the wrapper with "
                "loss=... (e.g. 'sparse_categorical_crossentropy'); it is used for the clean "
                "and the erased view."
            )
        if isinstance(y_pred, tuple):
            outputs, features = y_pred
        else:
            outputs, features = y_pred, None
        loss = super().compute_loss(x, y, outputs, sample_weight, training=training)
        if y is None or (self.erased_weight == 0.0 and self.consistency_weight == 0.0):
            return loss
        if features is None:  # evaluation: one more (stateless) forward pass for the map
            features, _ = self._plan.features_model(x, training=False)
        probabilities = self._probabilities(outputs)
        labels = focus_ops.labels_to_classes(y, self._plan.num_classes)
        explained = labels if self.target == "label" else keras.ops.argmax(probabilities, -1)
        maps = self._plan.maps(features, explained, focus.image_size(x, self.data_format))
        masks = focus_ops.erase_masks(maps, self.erase_threshold, self.region)
        erased = keras.ops.stop_gradient(focus_ops.erase(x, masks, self._fill_for(x),
                                                     self.data_format))
        erased_outputs = self._erased_forward(erased, training)
        # Under tf.distribute each replica's loss is divided by the replica count (the
        # gradients are summed): the compiled loss does it itself, the consistency term is
        # divided here; the trackers get the per-replica values, as Keras' loss tracker.
        replicas = ops_core.replicas_in_sync()
        terms = []
        if self.erased_weight:
            erased_loss = self.erased_weight * keras_compat.compile_loss(self)(
                y, erased_outputs, sample_weight)
            self.erased_loss_tracker.update_state(erased_loss * replicas)
            terms.append(erased_loss)
        if self.consistency_weight:
            relevant = focus_ops.relevance_mask(probabilities, labels, self.relevance, self.top_k)
            divergence = focus_ops.restricted_kl(probabilities, self._probabilities(erased_outputs),
                                             relevant)
            if sample_weight is not None:
                divergence = divergence * keras.ops.reshape(
                    keras.ops.cast(sample_weight, "float32"), (-1,))
            consistency = self.consistency_weight * keras.ops.mean(divergence)
            self.consistency_tracker.update_state(consistency)
            terms.append(consistency / replicas)
        self.erased_area_tracker.update_state(keras.ops.mean(masks))
        for term in terms:
            loss = loss + keras.ops.cast(term, loss.dtype)
        return loss

    def _erased_forward(self, erased, training):
        """The model on the erased images; in training, batch statistics are used but the
        state updates (moving statistics, RNG state) are not kept."""
        if not training:
            return self.model(erased, training=False)
        outputs, _ = self.model.stateless_call(
            [v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
            erased,
            training=True,
        )
        return outputs

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, tuple):
            y_pred = y_pred[0]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "erase_threshold": self.erase_threshold,
            "erased_weight": self.erased_weight,
            "consistency_weight": self.consistency_weight,
            "relevance": self.relevance,
            "top_k": self.top_k,
            "fill": self.fill,
            "region": self.region,
            "target": self.target,
            "from_logits": self._from_logits_arg,
            "feature_layer": self.feature_layer,
            "method": self.method,
            "data_format": self.data_format,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # deserialising consumes the nested model config
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects)
        return cls(**config)
