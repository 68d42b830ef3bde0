"""Analysis tools: equivariance error, gradient flow (shared filter bases), focus area (pairwise consistency)."""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import graph
from keras_convx.ops import group as gops

__all__ = ["equivariance_error", "focus_area", "gradient_flow", "group_elements", "transform"]

_INPUT_TYPES = ("auto", "image", "group")
_OUTPUT_TYPES = ("auto", "group", "image", "invariant")

# The group actions on NumPy batches live with the group maths (keras_convx.ops.group).
group_elements = gops.group_elements
transform = gops.transform


def _group_layers(obj):
    if isinstance(obj, keras.Model):
        return [layer for layer in obj.layers if getattr(layer, "group_input", None) is not None]
    return [obj] if getattr(obj, "group_input", None) is not None else []


def _auto_input(obj):
    if isinstance(obj, keras.Model):
        for layer in obj.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            return "group" if getattr(layer, "group_input", False) else "image"
    return "group" if getattr(obj, "group_input", False) else "image"


def _auto_output(obj, y):
    if y.ndim == 2:
        return "invariant"
    layers = _group_layers(obj)
    if not layers:
        return "image"
    from keras_convx.layers.group_maps import GroupPooling

    return "image" if isinstance(layers[-1], GroupPooling) else "group"


def equivariance_error(
    layer_or_model,
    inputs,
    group,
    input_type="auto",
    output_type="auto",
    data_format=None,
    per_element=False,
):
    """Relative equivariance error of a layer or model over all group elements.

    For every element g of p4 (4 rotations) or p4m (8 rotations/mirrors) it computes
    `‖f(g·x) − g·f(x)‖ / ‖f(x)‖` (Frobenius norm over the whole batch) and returns the
    largest. The action on a group feature map rotates/mirrors it spatially and permutes each
    field's |G| channels; on an image it is spatial only; an "invariant" output (e.g. logits)
    is left unchanged, so the error measures invariance.

    Args:
        layer_or_model: a callable Keras layer or model mapping one 4-D tensor to one tensor.
        inputs: NumPy batch `(B, N, N, C)` (channels_last) with square spatial size.
        group: `"p4"` or `"p4m"`.
        input_type: `"auto"` (group map if the first layer is a keras_convx group layer that
            takes one, else image), `"image"` or `"group"`.
        output_type: `"auto"` (rank-2 outputs are invariant; a 4-D output is a group map
            unless the last keras_convx group layer is `GroupPooling`), `"group"`, `"image"` or
            `"invariant"`.
        data_format: default `keras.config.image_data_format()` (or the layer's own).
        per_element: return a dict {element word: error} instead of the maximum.

    Returns:
        float (or dict): 0 up to rounding for an equivariant map; float32 layers reach ~1e-6.

    Example:

    >>> layer = keras_convx.layers.GroupConv2D(4, 3, group="p4")
    >>> x = np.random.rand(2, 9, 9, 8 * 4).astype("float32")
    >>> equivariance_error(layer, x, "p4") < 1e-5
    True
    """
    group = gops.check_group(group)
    input_type = arguments.choice("input_type", input_type, _INPUT_TYPES)
    output_type = arguments.choice("output_type", output_type, _OUTPUT_TYPES)
    if not callable(layer_or_model):
        raise TypeError(f"Expected layer_or_model to be a Keras layer or model. Received: {layer_or_model!r}")
    data_format = arguments.data_format(data_format or getattr(layer_or_model, "data_format", None))
    x = np.asarray(inputs)
    if x.ndim != 4:
        raise ValueError(f"Expected inputs to be a 4-D batch. Received: inputs.shape={x.shape}")
    spatial = x.shape[1:3] if data_format == "channels_last" else x.shape[2:4]
    if spatial[0] != spatial[1]:
        raise ValueError(f"Expected inputs with square spatial size (rotations). Received: {x.shape}")
    if input_type == "auto":
        input_type = _auto_input(layer_or_model)

    def f(v):
        return keras.ops.convert_to_numpy(layer_or_model(v)).astype(np.float64)

    y = f(x)
    if output_type == "auto":
        output_type = _auto_output(layer_or_model, y)
    if output_type != "invariant" and y.ndim != 4:
        raise ValueError(f"output_type={output_type!r} needs a 4-D output. Received: shape {y.shape}")
    scale = max(np.linalg.norm(y), np.finfo(np.float64).tiny)
    errors = {}
    for element in group_elements(group):
        moved_in = transform(x, element, group, input_type, data_format).astype(x.dtype)
        expected = transform(y, element, group, output_type, data_format)
        errors[element] = float(np.linalg.norm(f(moved_in) - expected) / scale)
    return errors if per_element else max(errors.values())


# ---------------------------------------------------------------------------------------------
# Gradient flow (deeply shared filter bases)
# ---------------------------------------------------------------------------------------------


def _leaf_layers(model):
    """Top-level layers in model order, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _filter_bases(model):
    from keras_convx.layers.shared_basis import FilterBasis  # noqa: PLC0415

    bases, seen = [], set()
    for layer in _leaf_layers(model):
        candidates = [layer] + [getattr(layer, "basis", None)]
        for obj in candidates:
            if isinstance(obj, FilterBasis) and id(obj) not in seen and obj.built:
                seen.add(id(obj))
                bases.append(obj)
    return bases


def check_batch(data):
    """`data` if it is a batch `(x, y)`; ValueError otherwise."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise ValueError(
        "Expected data to be a batch (x, y) of inputs and targets. "
        f"Received: data of type {type(data).__name__}"
    )


def gradient_flow(model, data, loss=None, training=True):
    """Per-layer gradient norms of a model's loss on one batch, and the state of its bases.

    The loss is the task loss only (no regularization penalties), so the norms show what
    flows back through the network. Nothing is updated (the forward pass is stateless, so
    batch-norm statistics stay as they are).

    Args:
        model: a built `keras.Model`.
        data: a batch `(x, y)`.
        loss: a Keras loss (name, instance or callable); default the compiled loss.
        training: the forward pass's `training` flag (default True, as in a training step).

    Returns:
        A dict with
        - `"loss"`: float;
        - `"gradient_norms"`: {layer name: ‖∂L/∂θ‖₂ over the layer's OWN trainable weights}
          in model order (a shared `FilterBasis` is not counted in its users);
        - `"basis_gradient_norms"`: {basis name: ‖∂L/∂B‖₂} for every `FilterBasis` used (the
          sum of all users' contributions);
        - `"orthonormality"`: {basis name: ‖B Bᵀ − I‖_F² / s²} (0 = orthonormal filters).

    Example:

    >>> flow = keras_convx.analysis.gradient_flow(model, (x[:64], y[:64]))
    >>> flow["gradient_norms"]           # {"block_1": 0.21, "block_2": 0.19, ...}
    """
    from keras_convx.ops import autodiff  # noqa: PLC0415
    from keras_convx.ops import shared_basis as sb  # noqa: PLC0415

    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"Expected model to be a built keras.Model. Received: model={model!r}")
    x, y = check_batch(data)
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("Pass loss=... (the model is not compiled with a loss).")
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    value, grads = autodiff.loss_and_gradients(model, x, y, loss_fn, training=training)
    by_id = {id(v): g for v, g in zip(model.trainable_variables, grads)}

    def norm(variables):
        squares = [
            float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.square(by_id[id(v)]))))
            for v in variables
            if id(v) in by_id
        ]
        return float(np.sqrt(sum(squares)))

    bases = _filter_bases(model)
    basis_ids = {id(b.kernel) for b in bases}
    norms = {}
    for layer in _leaf_layers(model):
        own = [v for v in layer.trainable_weights if id(v) not in basis_ids]
        if own:
            norms[layer.name] = norm(own)
    orth = {}
    for basis in bases:
        kernel = keras.ops.cast(basis.kernel, "float32")
        residual = keras.ops.convert_to_numpy(sb.orthonormality_residual(kernel))
        orth[basis.name] = float(residual) / basis.total_size**2
    return {
        "loss": float(keras.ops.convert_to_numpy(value)),
        "gradient_norms": norms,
        "basis_gradient_norms": {b.name: norm([b.kernel]) for b in bases},
        "orthonormality": orth,
    }


# ---------------------------------------------------------------------------------------------
# Focus maps and the focus area (pairwise consistency)
# ---------------------------------------------------------------------------------------------

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
        self.data_format = arguments.data_format(data_format or graph.data_format_of(functional))
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
        self.data_format = pool.data_format
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
        from keras_convx.ops import focus  # noqa: PLC0415

        if self.method == "cam":
            return focus.class_activation_maps(features, self.dense.kernel, classes,
                                               self.data_format)
        gradients = autodiff.input_gradient(
            lambda a: self.scores(self.head(a), classes), features
        )
        return focus.grad_cam_maps(features, gradients, self.data_format)

    def maps(self, features, classes, size):
        """Focus maps (B, H, W) in [0, 1] at the image size, without gradient (the feature
        map is cut first, so no second-order work is traced either)."""
        from keras_convx.ops import focus  # noqa: PLC0415

        raw = self.raw_maps(keras.ops.stop_gradient(features), classes)
        return keras.ops.stop_gradient(focus.focus_maps(raw, size))


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
        data_format: of the images; default: the model's layers' (if they agree), else Keras'.
        batch_size: images per forward pass.

    Returns:
        dict with `"focus_area"` (N,) fractions, `"maps"` (N, H, W) float32 in [0, 1],
        `"classes"` (N,) explained classes and `"method"` (`"cam"` or `"grad_cam"`).

    Example:

    >>> result = keras_convx.analysis.focus_area(model, x_test[:100], threshold=0.2)
    >>> result["focus_area"].mean()        # e.g. 0.31: the decisions rest on 31% of the image
    """
    threshold = check_threshold("threshold", threshold)
    batch_size = arguments.integer("batch_size", batch_size)
    plan = FocusPlan(model, feature_layer=feature_layer, method=method, data_format=data_format)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"Expected images to be a 4-D batch. Received: images.shape={images.shape}")
    if classes is not None:
        classes = np.asarray(classes).reshape(-1).astype("int32")
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


def compute_focus_maps(plan, images, classes=None, batch_size=64):
    """NumPy focus maps (N, H, W) and explained classes (N,) of `images` under a
    `FocusPlan` (classes default to the predictions)."""
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
