"""E4-Net architectures (He et al., NeurIPS 2021): the MNIST-rot networks and the CIFAR ResNet-18s.

Layer structure and widths follow the official PyTorch code (`model/architecture.py`,
`model/architecture_large.py`, `model/resnet.py`); with `official_compat=True` the
trainable parameter counts equal the official models' (tests/applications/test_e4net.py).
"""

import keras
import numpy as np

from keras_convx import arguments
from keras_convx.applications import _common
from keras_convx.layers import E4Conv2D
from keras_convx.layers import GroupBatchNormalization
from keras_convx.layers import GroupConv2D
from keras_convx.layers import GroupLiftConv2D
from keras_convx.layers import GroupPooling
from keras_convx.layers import e4_conv
from keras_convx.layers import group_conv
from keras_convx.layers import group_maps
from keras_convx.ops import group as gops

_MNIST_SIZES = {
    # fields, kernel_size, reduction_ratio, fields per slice (official `groups`)
    "normal": (16, 5, 1, 8),
    "large": (24, 5, 2, 2),
}
_RESNET_WIDTHS = {(4, False): (32, 64, 128, 256), (4, True): (22, 44, 88, 176)}


def _resnet_widths(group):
    """The official widths for p4 (= c4) and p4m (= d4); other groups scale p4's by
    sqrt(4 / |G|) (to even numbers), which keeps the parameter count near p4's."""
    if gops.group_spec(group) in _RESNET_WIDTHS:
        return _RESNET_WIDTHS[gops.group_spec(group)]
    scale = (4 / gops.group_order(group)) ** 0.5
    return tuple(max(2, 2 * round(w * scale / 2)) for w in _RESNET_WIDTHS[(4, False)])


def _bn(group, name):
    # PyTorch BatchNorm3d defaults: momentum 0.1 (Keras 0.9), eps 1e-5.
    return GroupBatchNormalization(group, momentum=0.9, epsilon=1e-5, name=name)


@_common.channels_last
def e4net_mnist_rot(
    size="normal",
    input_shape=(28, 28, 1),
    num_classes=10,
    group="p4",
    dropout=0.2,
    official_compat=False,
    name=None,
):
    """E4-Net for MNIST-rot.

    Lifting 3×3 conv → group BN → ReLU; E4 → BN → ReLU; max pool 2; 2 × [E4 → BN → ReLU →
    Dropout]; max pool 2; 3 × [E4 → BN → ReLU → Dropout]; group max pool; global max pool;
    Dense. `"normal"`: 16 fields, k = 5, r = 1, 2 slices (official 98.71% on MNIST-rot);
    `"large"`: 24 fields, k = 5, r = 2, 12 slices (98.81%).

    Args:
        size: `"normal"` or `"large"`.
        input_shape: channels_last `(rows, cols, channels)`; square with rows divisible by 4
            for exact invariance.
        num_classes: int.
        group: `"p4"` (the official networks), `"p4m"`, or any `"cN"` / `"dN"`.
        dropout: float, dropout rate.
        official_compat: bool, untied GroupNorm affine in the E4 layers (the official
            parameterisation; not exactly equivariant once trained).
        name: model name.

    Returns:
        An uncompiled `keras.Model` producing logits.

    Example:

    >>> model = e4net_mnist_rot("normal")
    >>> model.output_shape
    (None, 10)
    """
    size = arguments.choice("size", size, tuple(_MNIST_SIZES))
    group = gops.check_group(group)
    num_classes = arguments.integer("num_classes", num_classes)
    dropout = arguments.number("dropout", dropout, 0, 1, exclusive_maximum=True)
    official_compat = arguments.boolean("official_compat", official_compat)
    fields, k, r, per_slice = _MNIST_SIZES[size]

    def e4(i):
        return E4Conv2D(fields, k, group=group, reduction_ratio=r, slices=fields // per_slice,
                        official_compat=official_compat, data_format="channels_last", name=f"e4_{i}")

    inputs = keras.Input(shape=input_shape)
    x = GroupLiftConv2D(fields, 3, group=group, use_bias=False, data_format="channels_last",
                        name="lift")(inputs)
    x = keras.layers.ReLU()(_bn(group, "bn_1")(x))
    for i in range(2, 8):
        x = e4(i)(x)
        x = keras.layers.ReLU()(_bn(group, f"bn_{i}")(x))
        if i > 2:
            x = keras.layers.Dropout(dropout)(x)
        if i in (2, 4):
            x = keras.layers.MaxPooling2D(2, data_format="channels_last")(x)
    x = GroupPooling(group, data_format="channels_last", name="group_pool")(x)
    x = keras.layers.GlobalMaxPooling2D(data_format="channels_last")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"e4net_mnist_rot_{size}")


@_common.channels_last
def e4_resnet18(
    group="p4",
    num_classes=10,
    e4=True,
    input_shape=(32, 32, 3),
    dropout=0.2,
    kernel_size=3,
    reduction_ratio=2,
    fields_per_slice=2,
    widths=None,
    official_compat=False,
    name=None,
):
    """Group-equivariant CIFAR ResNet-18, with (`e4=True`) or without E4 layers.

    Stem: lifting 3×3 conv → group BN → ReLU. Four stages of two basic blocks (stage widths
    32/64/128/256 fields for p4, 22/44/88/176 for p4m, p4's scaled by sqrt(4/|G|) for
    other groups; strides 1, 2, 2, 2). Block: group
    3×3 conv → Dropout → BN → ReLU → [group 3×3 conv, or E4(k, r, `fields_per_slice`)] → BN,
    plus the shortcut (1×1 group conv + BN where the shape changes), then ReLU. As in the
    official code a strided group conv is a stride-1 conv followed by 2×2 max pooling, which
    keeps the network exactly equivariant (for cN/dN: on the 90° subgroup). Head: group max pool, global average pool,
    Dense. Reported CIFAR-10: p4-R18 92.47, p4-E4R18 93.58, p4m-R18 94.17, p4m-E4R18 95.04.

    Args:
        group: `"p4"`, `"p4m"` (the official networks), or any `"cN"` / `"dN"`.
        num_classes: int.
        e4: bool, E4 layers as each block's second conv (E4R18) or group convs (R18).
        input_shape: channels_last `(rows, cols, channels)`.
        dropout: float, dropout rate inside the blocks.
        kernel_size, reduction_ratio, fields_per_slice: the E4 layers' k, r and fields per
            generated kernel (official: 3, 2, 2).
        widths: optional 4 stage widths (fields) replacing the official ones.
        official_compat: bool, untied GroupNorm affine in the E4 layers.
        name: model name.

    Returns:
        An uncompiled `keras.Model` producing logits.

    Example:

    >>> model = keras_convx.applications.e4_resnet18("p4", widths=(2, 2, 2, 2),
    ...                                              input_shape=(16, 16, 3))
    >>> model.output_shape                        # logits
    (None, 10)
    """
    group = gops.check_group(group)
    num_classes = arguments.integer("num_classes", num_classes)
    e4 = arguments.boolean("e4", e4)
    dropout = arguments.number("dropout", dropout, 0, 1, exclusive_maximum=True)
    fields_per_slice = arguments.integer("fields_per_slice", fields_per_slice)
    official_compat = arguments.boolean("official_compat", official_compat)
    widths = tuple(widths or _resnet_widths(group))
    if len(widths) != 4:
        raise ValueError(f"Expected widths to be 4 stage widths. Received: widths={widths!r}")
    df = "channels_last"

    def gconv(fields, k, label):
        return GroupConv2D(fields, k, group=group, use_bias=False, data_format=df, name=label)

    inputs = keras.Input(shape=input_shape)
    x = GroupLiftConv2D(widths[0], 3, group=group, use_bias=False, data_format=df, name="stem")(inputs)
    x = keras.layers.ReLU()(_bn(group, "stem_bn")(x))
    in_fields = widths[0]
    for stage, (fields, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        for block in (1, 2):
            prefix = f"stage{stage}_block{block}"
            s = stride if block == 1 else 1
            y = gconv(fields, 3, f"{prefix}_conv1")(x)
            if s > 1:
                y = keras.layers.MaxPooling2D(s, data_format=df)(y)
            y = keras.layers.Dropout(dropout)(y)
            y = keras.layers.ReLU()(_bn(group, f"{prefix}_bn1")(y))
            if e4:
                if fields % fields_per_slice:
                    raise ValueError(
                        f"fields_per_slice={fields_per_slice} must divide every stage width "
                        f"(stage {stage} has {fields})."
                    )
                y = E4Conv2D(fields, kernel_size, group=group, reduction_ratio=reduction_ratio,
                             slices=fields // fields_per_slice, official_compat=official_compat,
                             data_format=df, name=f"{prefix}_e4")(y)
            else:
                y = gconv(fields, 3, f"{prefix}_conv2")(y)
            y = _bn(group, f"{prefix}_bn2")(y)
            shortcut = x
            if s != 1 or in_fields != fields:
                shortcut = gconv(fields, 1, f"{prefix}_shortcut")(x)
                if s > 1:
                    shortcut = keras.layers.MaxPooling2D(s, data_format=df)(shortcut)
                shortcut = _bn(group, f"{prefix}_shortcut_bn")(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            in_fields = fields
    x = GroupPooling(group, data_format=df, name="group_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=df)(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    default = f"{group}_{'e4' if e4 else ''}resnet18"
    return keras.Model(inputs, outputs, name=name or default)


_RESNET_PARTS = {
    "conv1": "residual_function.0",
    "bn1": "residual_function.2",
    "e4": "residual_function.4",
    "conv2": "residual_function.4",
    "bn2": "residual_function.5",
    "shortcut": "shortcut.0",
    "shortcut_bn": "shortcut.1",
}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _official_prefix(name, mnist):
    """The official module path of one of the builders' parametrised layers (None if none)."""
    if mnist:
        fixed = {"lift": "conv1", "logits": "fully_net.0"}
        if name in fixed:
            return fixed[name]
        kind, _, index = name.rpartition("_")
        return {"bn": f"bn{index}", "e4": f"conv{index}"}.get(kind) if index.isdigit() else None
    fixed = {"stem": "conv1.0", "stem_bn": "conv1.1", "logits": "fc"}
    if name in fixed:
        return fixed[name]
    head, _, part = name.partition("_block")
    if not head.startswith("stage") or not part[:1].isdigit():
        return None
    stage, block, layer = int(head[len("stage"):]), int(part[0]), part[2:]
    return f"conv{stage + 1}_x.{block - 1}.{_RESNET_PARTS[layer]}" if layer in _RESNET_PARTS else None


def _require(state, keys):
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"The official state dict has no {missing}: is it the state dict of "
                         "the official model this builder matches?")


def _official_weights(layer, state, prefix):
    """(weights for `layer.set_weights`, the state-dict keys they came from)."""
    if isinstance(layer, E4Conv2D):
        keys = {f"{prefix}.{key}" for key in e4_conv.OFFICIAL_KEYS}
        return e4_conv.from_official_weights(state, prefix, layer.official_compat), keys
    if isinstance(layer, GroupBatchNormalization):
        keys = [f"{prefix}.bn.{key}" for key in _BN_KEYS]
        _require(state, keys)
        return group_maps.batch_norm_from_official(*(state[k] for k in keys)), set(keys)
    _require(state, [f"{prefix}.weight"])
    keys = {k for k in (f"{prefix}.weight", f"{prefix}.bias") if k in state}
    weight, bias = state[f"{prefix}.weight"], state.get(f"{prefix}.bias")
    if isinstance(layer, (GroupLiftConv2D, GroupConv2D)):
        return group_conv.from_official_weights(weight, bias), keys
    _require(state, [f"{prefix}.bias"])
    weight = arguments.array(f"{prefix}.weight", weight, ndim=2)  # nn.Linear (out, in)
    return [weight.T, arguments.array(f"{prefix}.bias", bias, ndim=1)], keys


def from_official_weights(model, state_dict):
    """Load the `state_dict` of an official E4-Net PyTorch model into the matching builder's
    model, in place; its logits then equal the official model's in inference mode.

    The official models (github.com/LingshenHe/Efficient-Equivariant-Network) and their
    builders here:

    - `E4_net` / `E4_netL` (`model/architecture.py`, `architecture_large.py`) →
      `e4net_mnist_rot("normal" / "large", official_compat=True)`;
    - `E4C4resnet18`, `E4D4resnet18`, `C4resnet18`, `D4resnet18` (`model/resnet.py`) →
      `e4_resnet18("p4" / "p4m", e4=True / False, official_compat=True)`.

    Every official parameter and BatchNorm statistic is used, or a ValueError lists what
    was not (so a mismatched model is never half-loaded): `num_batches_tracked` is the only
    key skipped, and a `module.` prefix (`nn.DataParallel`, as the official `train.py` saves)
    is stripped. Values may be arrays, backend tensors or `torch.nn.Parameter`s. The
    official E4 GroupNorm has one γ, β per orientation copy: build with
    `official_compat=True` unless they are tied. The official stride-2 group convolutions
    are stride-1 convolutions followed by 2×2 max pooling, which is how `e4_resnet18`
    builds its blocks; BatchNorm moving variances follow Keras (biased) when training goes on
    (see `keras_convx.layers.group_maps.batch_norm_from_official`).

    Args:
        model: a model from `e4net_mnist_rot` or `e4_resnet18` (built, with the official
            widths, or the widths of the official model the state dict comes from).
        state_dict: mapping from official keys to values.

    Returns:
        `model`, with the official weights.

    Example:

    ```python
    model = e4net_mnist_rot("normal", official_compat=True)
    from_official_weights(model, torch.load("e4net.pt", map_location="cpu"))
    ```
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    names = {layer.name for layer in model.layers}
    if not ({"lift", "logits"} <= names or {"stem", "logits"} <= names):
        raise ValueError(
            "Expected a model built by keras_convx.applications.e4net_mnist_rot or "
            f"e4_resnet18 (layers named 'lift'/'stem' ... 'logits'). Received: {model.name!r}"
        )
    mnist = "lift" in names
    used, loads = set(), []
    for layer in model.layers:
        prefix = _official_prefix(layer.name, mnist) if layer.weights else None
        if prefix is None:
            continue
        weights, keys = _official_weights(layer, state, prefix)
        if len(weights) != len(layer.weights):
            raise ValueError(
                f"Layer {layer.name!r} has {len(layer.weights)} weights but the official "
                f"{prefix!r} gives {len(weights)} (keys {sorted(keys)}); e.g. an official "
                "group conv built with bias=True has no counterpart in the builder."
            )
        for variable, value in zip(layer.weights, weights):
            if tuple(variable.shape) != value.shape:
                raise ValueError(
                    f"The official {prefix!r} gives shape {value.shape} for {variable.path} of "
                    f"shape {tuple(variable.shape)}: build the model with the official model's "
                    "group, size/widths and official_compat=True."
                )
        used |= keys
        loads.append((layer, weights))
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"{len(unused)} official keys have no layer in {model.name!r}: "
                         f"{unused[:8]}{' ...' if len(unused) > 8 else ''}")
    for layer, weights in loads:
        layer.set_weights([np.asarray(w, dtype=v.dtype) for w, v in zip(weights, layer.weights)])
    return model
