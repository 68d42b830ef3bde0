"""Analysis tools: equivariance error, gradient flow (shared filter bases), focus area (pairwise consistency)."""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx import graph
# The focus maps moved to keras_convx.focus; focus_area stays public here, the others stay
# importable from here (deprecated).
from keras_convx.focus import FOCUS_METHODS  # noqa: F401
from keras_convx.focus import FocusPlan  # noqa: F401
from keras_convx.focus import check_threshold  # noqa: F401
from keras_convx.focus import compute_focus_maps  # noqa: F401
from keras_convx.focus import focus_area  # noqa: F401
from keras_convx.focus import image_size  # noqa: F401
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


def _inscribed_disc(shape, data_format):
    """1 inside the disc inscribed in a 4-D map's square spatial extent, 0 outside (broadcastable)."""
    size = shape[1] if data_format == "channels_last" else shape[2]
    c = (size - 1) / 2
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    disc = ((i - c) ** 2 + (j - c) ** 2 <= c**2 + 1e-9).astype(np.float64)
    return disc[None, :, :, None] if data_format == "channels_last" else disc[None, None]


def equivariance_error(
    layer_or_model,
    inputs,
    group,
    input_type="auto",
    output_type="auto",
    data_format=None,
    per_element=False,
    elements="all",
):
    """Relative equivariance error of a layer or model over the group's elements.

    For every element g (p4: 4 rotations, p4m: 8 rotations/mirrors, cN/dN: N rotations and
    the N mirrors) it computes `‖f(g·x) − g·f(x)‖ / ‖f(x)‖` (Frobenius norm over the whole
    batch) and returns the largest. Elements that move pixels exactly (rotations by
    multiples of 90°, the grid mirrors) are compared everywhere; for the other angles the
    images are rotated by bilinear interpolation and the two sides are compared inside the
    disc inscribed in the output (both norms over the disc): give such elements smooth
    inputs that are zero outside the inscribed disc, or the interpolation and the corners
    dominate the error. The action on a group feature map rotates/mirrors it spatially and permutes each
    field's |G| channels; on an image it is spatial only; an "invariant" output (e.g. logits)
    is left unchanged, so the error measures invariance.

    Args:
        layer_or_model: a callable Keras layer or model mapping one 4-D tensor to one tensor.
        inputs: NumPy batch `(B, N, N, C)` (channels_last) with square spatial size.
        group: `"p4"`, `"p4m"`, `"cN"` or `"dN"` (N >= 1).
        input_type: `"auto"` (group map if the first layer is a keras_convx group layer that
            takes one, else image), `"image"` or `"group"`.
        output_type: `"auto"` (rank-2 outputs are invariant; a 4-D output is a group map
            unless the last keras_convx group layer is `GroupPooling`), `"group"`, `"image"` or
            `"invariant"`.
        data_format: default `keras.config.image_data_format()` (or the layer's own).
        per_element: return a dict {element word: error} instead of the maximum.
        elements: `"all"` (default) or `"exact"` (only the elements that move pixels
            exactly: the subgroup of 90° rotations and grid mirrors).

    Returns:
        float (or dict): on exact elements 0 up to rounding for an equivariant map (float32
        layers reach ~1e-6); on interpolated elements (cN/dN off the 90° grid) a small
        positive number even for an equivariant layer (about 0.015 for a random c8 network
        on smooth disc inputs).

    Example:

    >>> layer = keras_convx.layers.GroupConv2D(4, 3, group="p4")
    >>> x = np.random.rand(2, 9, 9, 8 * 4).astype("float32")
    >>> equivariance_error(layer, x, "p4") < 1e-5
    True
    """
    group = gops.check_group(group)
    input_type = arguments.choice("input_type", input_type, _INPUT_TYPES)
    elements = arguments.choice("elements", elements, ("all", "exact"))
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
    order = gops.group_order(group)
    channels = x.shape[3] if data_format == "channels_last" else x.shape[1]
    if input_type == "group" and channels % order:
        raise ValueError(f"A group feature map of group={group!r} has a multiple of |G| = {order} "
                         f"channels. Received: inputs.shape={x.shape}")

    def f(v):
        return keras.ops.convert_to_numpy(layer_or_model(v)).astype(np.float64)

    y = f(x)
    if output_type == "auto":
        output_type = _auto_output(layer_or_model, y)
    if output_type != "invariant" and y.ndim != 4:
        raise ValueError(f"output_type={output_type!r} needs a 4-D output. Received: shape {y.shape}")
    words = group_elements(group)
    exact = set(gops.exact_elements(group))
    disc = 1.0 if output_type == "invariant" else _inscribed_disc(y.shape, data_format)
    errors = {}
    for element in words:
        index = gops.word_element(element, group)
        if elements == "exact" and index not in exact:
            continue
        mask = 1.0 if index in exact else disc
        moved_in = transform(x, element, group, input_type, data_format).astype(x.dtype)
        expected = transform(y, element, group, output_type, data_format)
        scale = max(np.linalg.norm(mask * y), np.finfo(np.float64).tiny)
        errors[element] = float(np.linalg.norm(mask * (f(moved_in) - expected)) / scale)
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
    from keras_convx.layers.filter_basis import FilterBasis  # noqa: PLC0415

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
        model: a built single-output `keras.Model`, or a training wrapper with a
            `focus_model` (`keras_convx.training.PairwiseConsistency`: its classifier is
            differentiated with the wrapper's compiled loss).
        data: a batch `(x, y)`.
        loss: a Keras loss (name, instance or callable); default the compiled loss (one loss:
            a list or dict of losses is a ValueError).
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

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(16, 8, 8, 1), np.random.randint(0, 3, 16)
    >>> flow = keras_convx.analysis.gradient_flow(model, (x, y))
    >>> list(flow["gradient_norms"])     # one norm per layer with weights: {"conv": 0.21, ...}
    ['conv', 'head']
    """
    from keras_convx.ops import autodiff  # noqa: PLC0415
    from keras_convx.ops import shared_basis as sb  # noqa: PLC0415

    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"Expected model to be a built keras.Model. Received: model={model!r}")
    x, y = check_batch(data)
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("Pass loss=... (the model is not compiled with a loss).")
    # a training wrapper (PairwiseConsistency) differentiates the classifier it trains: its
    # task loss, without the wrapper's extra views
    net = getattr(model, "focus_model", model)
    outputs = getattr(net, "outputs", None) or [None]  # a subclassed model: not known
    if isinstance(loss, (list, tuple, dict)) or len(outputs) > 1:
        raise ValueError(
            "gradient_flow differentiates one loss of a single-output model. Received: "
            f"{len(outputs)} outputs, loss={loss!r}")
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if not callable(loss_fn):
        raise TypeError(f"Expected loss to be a Keras loss or a callable. Received: loss={loss!r}")
    value, grads = autodiff.loss_and_gradients(net, x, y, loss_fn, training=training)
    by_id = {id(v): g for v, g in zip(net.trainable_variables, grads)}

    def norm(variables):
        squares = [
            float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.square(by_id[id(v)]))))
            for v in variables
            if id(v) in by_id
        ]
        return float(np.sqrt(sum(squares)))

    bases = _filter_bases(net)
    basis_ids = {id(b.kernel) for b in bases}
    norms = {}
    for layer in _leaf_layers(net):
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
