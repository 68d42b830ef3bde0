"""Focus maps of a classifier, in one place: where a model's focus map comes from
(`FocusPlan`: CAM or Grad-CAM, the feature tensor), the maps themselves (the maths in
`keras_convx.ops.focus`) and the focus area (Chen et al., NeurIPS 2021).

`analysis.focus_area` (this module's `focus_area`), `callbacks.FocusArea` and
`training.PairwiseConsistency` all go through a `FocusPlan`.
"""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import graph
from keras_convx.ops import focus as focus_ops

__all__ = ["FOCUS_METHODS", "FocusPlan", "check_classes", "check_threshold", "compute_focus_maps",
           "focus_area", "image_size"]

FOCUS_METHODS = ("auto", "cam", "grad_cam")
# Layers between the global pooling and the dense head, or after the head, that leave the
# class scores' argmax alone.
_TRANSPARENT_HEAD = ("Dropout", "GaussianDropout", "AlphaDropout", "GaussianNoise")


def _is_softmax(activation):
    return getattr(activation, "__name__", None) == "softmax"


def _rank(tensor):
    return len(tensor.shape)


class FocusPlan:
    """Where a model's focus map comes from: the feature tensor, CAM or Grad-CAM, and
    whether the model outputs probabilities. Built once per model; used by `focus_area`,
    `callbacks.FocusArea` and `training.PairwiseConsistency` (inside its training step).

    CAM applies when the output is `Dense(GlobalAveragePooling2D(A))` (optionally with
    dropout/noise in between and a softmax after); `A` is then the feature map. Otherwise
    Grad-CAM explains the last 4-D tensor on the output's path (or `feature_layer`).
    """

    def __init__(self, model, feature_layer=None, method="auto", data_format=None):

        method = arguments.choice("method", method, FOCUS_METHODS)
        model = getattr(model, "focus_model", model)  # a PairwiseConsistency wrapper
        functional = graph.graph_of(model)
        if len(functional.inputs) != 1 or _rank(functional.inputs[0]) != 4:
            raise ValueError(
                "Expected a model with one 4-D image input for focus maps. Received inputs "
                f"{[tuple(t.shape) for t in functional.inputs]}"
            )
        if len(functional.outputs) != 1 or _rank(functional.outputs[0]) != 2:
            raise ValueError(
                "Expected a model with one (batch, classes) output for focus maps. Received "
                f"outputs {[tuple(t.shape) for t in functional.outputs]}"
            )
        if data_format is None:  # the images' layout: the model's, when it has only one
            formats = graph.data_formats(functional)
            if len(formats) > 1:
                raise ValueError(f"Model {model.name!r} mixes {' and '.join(formats)} layers, so "
                                 "the layout of its images is ambiguous: pass data_format=.")
            data_format = formats[0] if formats else None
        self.data_format = arguments.data_format(data_format)
        # The feature map's own layout (a model may mix formats): the CAM head's pooling, or
        # the layer that makes the Grad-CAM feature map, else the images'.
        self.feature_format = self.data_format
        output = functional.outputs[0]
        self.num_classes = int(output.shape[-1])
        self.probabilities = False
        self.dense = None
        cam_features = self._find_cam_head(output)
        if feature_layer is not None:
            features = self._named_features(functional, feature_layer)
        elif cam_features is not None and method != "grad_cam":
            features = cam_features
        else:
            features = self._last_spatial(output)
        if method == "cam" and features is not cam_features:
            raise ValueError(
                "method='cam' needs a GlobalAveragePooling2D → Dense head on the feature map; "
                f"model {model.name!r} has none there. Use method='grad_cam' or 'auto'."
            )
        self.method = "cam" if method != "grad_cam" and features is cam_features else "grad_cam"
        if features is not cam_features:
            maker = getattr(graph.producer(features)[0], "data_format", None)
            self.feature_format = maker if maker in arguments.DATA_FORMATS else self.data_format
        self.features_model = keras.Model(functional.inputs[0], [features, output])
        self._features, self._output = features, output
        self._head_nodes = None
        if self.method == "grad_cam":
            self._head_nodes = self._nodes_between(functional, features, output)
            if self._head_nodes is None:
                raise ValueError(
                    f"The output of model {model.name!r} does not depend on the feature map "
                    f"{features.name!r} alone (e.g. a skip connection bypasses it), so Grad-CAM "
                    "cannot explain it there. Pass feature_layer= a layer every path to the "
                    "output goes through."
                )

    @staticmethod
    def _nodes_between(functional, source, target):
        """The functional's nodes computable from `source` alone, in topological order (None if
        `target` is not among them). Walking the existing nodes leaves the model untouched
        (a `keras.Model(source, target)` would add nodes to the user's layers)."""

        known, nodes = {id(source)}, []
        for node in graph.layer_nodes(functional):
            inputs = keras.tree.flatten(node.input_tensors)
            if inputs and all(id(t) in known for t in inputs):
                nodes.append(node)
                known.update(id(t) for t in node.output_tensors)
        return nodes if id(target) in known else None

    def head(self, features):
        """The model's output computed from the feature map (inference mode)."""

        values = {id(self._features): features}
        for node in self._head_nodes:
            args, kwargs = node.arguments.fill_in(values)
            if graph.accepts_training(node.operation):
                kwargs["training"] = False
            outputs = keras.tree.flatten(node.operation(*args, **kwargs))
            values.update((id(t), v) for t, v in zip(node.output_tensors, outputs))
        return values[id(self._output)]

    def _find_cam_head(self, output):
        layer, node = graph.producer(output)
        while isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)) or (
            type(layer).__name__ in _TRANSPARENT_HEAD
        ):
            if isinstance(layer, keras.layers.Softmax) or _is_softmax(
                getattr(layer, "activation", None)
            ):
                self.probabilities = True
            layer, node = graph.producer(node.input_tensors[0])
        if not isinstance(layer, keras.layers.Dense) or _rank(node.input_tensors[0]) != 2:
            return None
        self.probabilities = self.probabilities or _is_softmax(layer.activation)
        pool, pool_node = graph.producer(node.input_tensors[0])
        while type(pool).__name__ in _TRANSPARENT_HEAD:
            pool, pool_node = graph.producer(pool_node.input_tensors[0])
        if not isinstance(pool, keras.layers.GlobalAveragePooling2D) or pool.keepdims:
            return None
        self.dense = layer
        self.feature_format = pool.data_format
        return pool_node.input_tensors[0]

    @staticmethod
    def _named_features(functional, name):

        try:
            layer = functional.get_layer(name)
        except ValueError:
            raise ValueError(
                f"Expected feature_layer to name a layer of the model. Received: "
                f"feature_layer={name!r}; layers: {[layer.name for layer in functional.layers]}"
            ) from None
        nodes = [node for node in graph.layer_nodes(functional) if node.operation is layer]
        if len(nodes) != 1 or len(nodes[0].output_tensors) != 1 or _rank(
            nodes[0].output_tensors[0]
        ) != 4:
            raise ValueError(
                f"Expected feature_layer={name!r} to be called once in the model and output a "
                "4-D feature map."
            )
        return nodes[0].output_tensors[0]

    @staticmethod
    def _last_spatial(output):
        tensor = output
        while True:
            layer, node = graph.producer(tensor)
            if isinstance(layer, keras.layers.InputLayer) or not node.input_tensors:
                raise ValueError(
                    "Expected a model with a spatial (4-D) feature map before its head: focus "
                    "maps (CAM / Grad-CAM) explain one. This model has none on its output path."
                )
            if tensor is not output and _rank(tensor) == 4:
                return tensor
            tensor = node.input_tensors[0]

    def scores(self, outputs, classes):
        """Score explained by Grad-CAM: the logit, or log p for probability outputs."""
        one_hot = keras.ops.one_hot(keras.ops.cast(classes, "int32"), self.num_classes)
        outputs = keras.ops.cast(outputs, "float32")
        if self.probabilities:
            outputs = keras.ops.log(keras.ops.maximum(outputs, 1e-12))
        return keras.ops.sum(one_hot * outputs, axis=-1)

    def raw_maps(self, features, classes):
        """Raw (B, h, w) CAM / Grad-CAM of `classes` from the feature map."""
        from keras_convx.ops import autodiff  # noqa: PLC0415
        if self.method == "cam":
            return focus_ops.class_activation_maps(features, self.dense.kernel, classes,
                                                   self.feature_format)
        gradients = autodiff.input_gradient(
            lambda a: self.scores(self.head(a), classes), features
        )
        return focus_ops.grad_cam_maps(features, gradients, self.feature_format)

    def maps(self, features, classes, size):
        """Focus maps (B, H, W) in [0, 1] at the image size, without gradient (the feature
        map is cut first, so no second-order work is traced either)."""
        raw = self.raw_maps(keras.ops.stop_gradient(features), classes)
        return keras.ops.stop_gradient(focus_ops.focus_maps(raw, size))


def image_size(images, data_format):
    """(H, W) of a 4-D image batch in `data_format`."""
    shape = tuple(images.shape)
    return shape[1:3] if data_format == "channels_last" else shape[2:4]


def check_threshold(name, value):
    """A float in (0, 1); ValueError naming `name` otherwise."""
    return arguments.number(name, value, 0, 1, exclusive_minimum=True, exclusive_maximum=True)


def focus_area(model, images, threshold=0.5, classes=None, feature_layer=None, method="auto",
               data_format=None, batch_size=64):
    """Focus maps of a classifier and the fraction of each image they cover.

    The focus map is the class activation map (CAM, Zhou et al. 2016) `Σ_k w_{c,k} A_k` for
    models whose output is a dense layer on the global average of a feature map `A` (with
    optional dropout between and softmax after), and Grad-CAM (Selvaraju et al. 2017,
    `ReLU(Σ_k mean(∂score_c/∂A_k) A_k)`, score = logit, or log-probability for softmax
    outputs) otherwise. Each map is resized bilinearly to the image and min-max normalised to
    [0, 1]; the focus area of an image is the fraction of its pixels with map value ≥
    `threshold` (Chen et al., NeurIPS 2021: scene classifiers do better with a larger one).

    Args:
        model: a Functional or Sequential classifier with one 4-D image input and one
            (batch, classes) output. A `training.PairwiseConsistency` wrapper is explained
            through its inner model.
        images: NumPy batch (N, H, W, C) (or (N, C, H, W) channels_first).
        threshold: float in (0, 1) (the paper reports 0.2 and 0.5).
        classes: int labels (N,) of the class to explain; default the predicted class.
        feature_layer: name of the layer whose 4-D output to explain; default the map under
            the CAM head, or for Grad-CAM the last 4-D tensor on the output's path.
        method: `"auto"` (CAM where the head allows it), `"cam"` or `"grad_cam"`.
        data_format: of the images; default: the model's layers' (asked for if they mix), else Keras'.
        batch_size: images per forward pass.

    Returns:
        dict with `"focus_area"` (N,) fractions, `"maps"` (N, H, W) float32 in [0, 1],
        `"classes"` (N,) explained classes and `"method"` (`"cam"` or `"grad_cam"`).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> x = np.random.rand(16, 8, 8, 1)
    >>> result = keras_convx.analysis.focus_area(model, x, threshold=0.2)
    >>> result["focus_area"].shape, result["maps"].shape, result["method"]
    ((16,), (16, 8, 8), 'cam')
    >>> bool(0 <= result["focus_area"].mean() <= 1)  # trained: e.g. 0.31 (31% of the image)
    True
    """
    threshold = check_threshold("threshold", threshold)
    batch_size = arguments.integer("batch_size", batch_size)
    plan = FocusPlan(model, feature_layer=feature_layer, method=method, data_format=data_format)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"Expected images to be a 4-D batch. Received: images.shape={images.shape}")
    if classes is not None:
        classes = np.asarray(classes).reshape(-1)
        if len(classes) != len(images):
            raise ValueError(
                f"Expected one class per image. Received: {len(classes)} classes for "
                f"{len(images)} images"
            )
    maps, explained = compute_focus_maps(plan, images, classes, batch_size)
    return {
        "focus_area": np.mean(maps >= threshold, axis=(1, 2)),
        "maps": maps,
        "classes": explained,
        "method": plan.method,
    }


def check_classes(name, classes, num_classes):
    """Integer class indices in [0, num_classes) → an int32 NumPy array; TypeError for
    another dtype, ValueError naming the indices out of range.

    >>> check_classes("classes", [2, 0], 3).tolist()
    [2, 0]
    >>> check_classes("classes", [3], 3)
    Traceback (most recent call last):
    ValueError: Expected classes in [0, 3) (the model's outputs). Received: classes containing [3]
    """
    classes = np.asarray(classes)
    if not (np.issubdtype(classes.dtype, np.integer) or classes.size == 0):
        raise TypeError(f"Expected {name} to be integer class indices. Received: {name} of "
                        f"dtype {classes.dtype}")
    wrong = classes[(classes < 0) | (classes >= num_classes)]
    if wrong.size:
        raise ValueError(f"Expected {name} in [0, {num_classes}) (the model's outputs). "
                         f"Received: {name} containing {wrong[:5].tolist()}")
    return classes.astype("int32")


def compute_focus_maps(plan, images, classes=None, batch_size=64):
    """NumPy focus maps (N, H, W) and explained classes (N,) of `images` under a
    `FocusPlan` (classes default to the predictions)."""
    if classes is not None:
        classes = check_classes("classes", classes, plan.num_classes)
    size = image_size(images, plan.data_format)
    maps, explained = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        features, outputs = plan.features_model(batch, training=False)
        if classes is None:
            chosen = keras.ops.argmax(outputs, axis=-1)
        else:
            chosen = classes[start:start + batch_size]
        maps.append(keras.ops.convert_to_numpy(plan.maps(features, chosen, size)))
        explained.append(np.asarray(keras.ops.convert_to_numpy(chosen)).astype("int32"))
    return np.concatenate(maps).astype("float32"), np.concatenate(explained)
