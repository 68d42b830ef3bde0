"""Setting the masks of a `keras_convx.prunable` model: unit scores per granularity, the
per-layer magnitude ranking (tfmot's), the m:n pattern, and the zeroing of pruned weights and
of the optimizer's slots for them. `keras_convx.pruning` re-exports `update_masks` and
`sparsity_report`.
"""

import math

import numpy as np

from keras_convx import arguments
from keras_convx import keras_compat
from keras_convx.ops.core import to_numpy
from keras_convx.ops.synaptic import NORMALIZATIONS
from keras_convx.prunable import PrunableMixin
from keras_convx.prunable import masked_layers
from keras_convx.prunable import parse_granularity
from keras_convx.prunable import prunable_weights

__all__ = ["check_normalization", "layer_scores", "mask_counts", "sparsity_report",
           "update_masks"]


# -- masks -------------------------------------------------------------------------------------


def _units(values, out_axes, in_axes, kind):
    """The axes a unit of `kind` spans: a score per unit is the sum of |w| over the others."""
    ndim = values.ndim
    out_axes = tuple(a % ndim for a in out_axes)
    in_axes = tuple(a % ndim for a in in_axes)
    if kind == "weight":
        return tuple(range(ndim))
    if kind == "connection":
        return tuple(sorted(out_axes + in_axes))
    return tuple(sorted(out_axes))  # channel


def _reduce(values, keep):
    return np.abs(values).sum(axis=tuple(a for a in range(values.ndim) if a not in keep),
                              keepdims=True)


def layer_scores(layer, criterion="magnitude", normalization=None):
    """`{link: [(attribute, unit axes, scores)]}`: per linked weight group of the layer, each
    weight's unit scores for the layer's granularity (|w|, or the criterion's scores, summed
    over the entries of each unit; for "weight" and "m:n" the entries themselves), divided by
    their output channel's L2 norm (`normalization="channel"`) or by the root mean square of
    all the layer's scores (`"layer"`), as `keras_convx.ops.synaptic.normalize_scores` does
    for synaptic strengths."""
    kind = parse_granularity(layer.granularity)[0]
    groups = {}
    for name, (out_axes, in_axes, link) in prunable_weights(layer).items():
        values = to_numpy(layer.pruned_variable(name), "float64")
        if callable(criterion):
            values = np.asarray(criterion(layer, name, values), dtype="float64")
        axes = None if kind in ("weight", "m:n") else _units(values, out_axes, in_axes, kind)
        score = np.abs(values) if axes is None else _reduce(values, axes).reshape(
            [values.shape[a] for a in axes])
        if normalization == "channel":
            out = {a % values.ndim for a in out_axes}
            positions = range(values.ndim) if axes is None else axes
            score = _divide(score, np.sqrt(np.sum(score**2, keepdims=True, axis=tuple(
                i for i, a in enumerate(positions) if a not in out))))
        groups.setdefault(name if kind == "m:n" else link, []).append((name, axes, score))
    if normalization == "layer":
        scale = np.sqrt(np.mean(np.concatenate(
            [sc.reshape(-1) ** 2 for members in groups.values() for _, _, sc in members])))
        groups = {link: [(n, a, _divide(sc, scale)) for n, a, sc in members]
                  for link, members in groups.items()}
    return groups


def _divide(scores, scale):
    return np.divide(scores, scale, out=np.zeros_like(scores), where=np.asarray(scale) > 0)


def _mn_mask(scores, m, n, axis):
    """1 for the m largest of every n consecutive entries along `axis`."""
    moved = np.moveaxis(scores, axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // n, n)
    order = np.argsort(-blocks, axis=-1, kind="stable")
    mask = np.zeros_like(blocks)
    np.put_along_axis(mask, order[..., :m], 1.0, axis=-1)
    return np.moveaxis(mask.reshape(moved.shape), -1, axis)


def _expand(unit_mask, keep, shape):
    full = [1] * len(shape)
    for axis, size in zip(keep, unit_mask.shape):
        full[axis] = size
    return np.broadcast_to(unit_mask.reshape(full), shape)


def _keep_count(total, sparsity, round_to):
    keep = total - int(math.floor(sparsity * total + 1e-9))
    if round_to > 1:
        keep = min(total, int(math.ceil(keep / round_to)) * round_to)
    return max(keep, 0)


SCOPES = ("layer", "global")


def check_normalization(normalization, layers=()):
    """`normalization` if it is one of `keras_convx.ops.synaptic.NORMALIZATIONS` and, for
    "channel", none of the `make_prunable` `layers` prunes whole channels; ValueError
    otherwise (before any mask changes)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"Expected normalization to be one of {list(NORMALIZATIONS)}. "
                         f"Received: normalization={normalization!r}")
    whole = [layer.name for layer in layers if layer.granularity == "channel"]
    if normalization == "channel" and whole:
        raise ValueError("normalization='channel' ranks units within their output channel; "
                         f"the layers {whole} prune whole channels (granularity "
                         "'channel'). Use normalization=None or 'layer'.")
    return normalization


def update_masks(model, sparsity, criterion="magnitude", layers=None, scope="layer",
                 normalization=None):
    """Sets every prunable layer's masks so `sparsity` of its units (entries, connections,
    channels) are pruned, by magnitude; for `"m:n"` the pattern holds in every group whatever
    `sparsity` is. Masks only lose units. Pruned entries are set to exactly zero, and so are
    the optimizer's slots for them.

    Args:
        model: a model from `make_prunable`.
        sparsity: float in [0, 1).
        criterion: `"magnitude"` or `callable(layer, attribute, values) -> scores` (NumPy,
            the weight's shape; larger means more important).
        layers: optional subset of the prunable layers (layers or names).
        scope: `"layer"` (each layer pruned to `sparsity`: tfmot's) or `"global"` (one
            ranking over all the layers' units, `torch.nn.utils.prune.global_unstructured`'s:
            a unit's score is its mean |w|, so channels of different sizes compare; needs one
            granularity, not "m:n", for all layers; `round_to` does not apply).
        normalization: None (default), `"channel"` (each unit's score divided by the L2 norm
            of its output channel's: its share of the channel; not with granularity
            "channel", where it would make every unit equal) or `"layer"` (by the root mean
            square of the layer's scores: layers of different scales compare under
            `scope="global"`). For "m:n" no normalization changes the pattern.

    Returns:
        `{layer name: fraction of its pruned entries}` plus `"total"`.
    """
    sparsity = arguments.number("sparsity", sparsity, 0, 1, exclusive_maximum=True)
    scope = arguments.choice("scope", scope, SCOPES)
    if not (criterion == "magnitude" or callable(criterion)):
        raise ValueError("Expected criterion to be 'magnitude' or a callable. "
                         f"Received: criterion={criterion!r}")
    layers = arguments.members("layers", layers, masked_layers(model), "prunable layers",
                               accept=lambda layer: isinstance(layer, PrunableMixin))
    if not layers:
        raise ValueError("Expected a model from keras_convx.pruning.make_prunable (it has no "
                         "prunable layer).")
    check_normalization(normalization, layers)
    if scope == "global":
        kinds = {layer.granularity for layer in layers}
        if len(kinds) > 1 or ":" in next(iter(kinds)):
            raise ValueError("scope='global' ranks one kind of unit: it needs one granularity "
                             f"other than 'm:n' for all layers. Received: {sorted(kinds)}")
    optimizer = getattr(model, "optimizer", None)
    groups = []  # (flat unit scores, flat live units, unit size, round_to, finish(units))
    for layer in layers:
        granularity = parse_granularity(layer.granularity)
        spec = prunable_weights(layer)
        for members in layer_scores(layer, criterion, normalization).values():
            old = [to_numpy(layer.pruning_masks[name]) for name, _, _ in members]
            finish = _finisher(layer, members, old, optimizer)
            if granularity[0] == "m:n":
                name, _, scores = members[0]
                finish(_mn_mask(scores, granularity[1], granularity[2], spec[name][1][0]))
            elif granularity[0] == "weight":  # linked weights ranked together
                scores = np.concatenate([sc.reshape(-1) for _, _, sc in members])
                live = np.concatenate([m.reshape(-1) for m in old])
                groups.append((scores, live, 1, 1, finish))
            else:  # connection / channel: linked weights' unit scores add up
                _, axes, first = members[0]
                # (a depthwise bias (C·M,) scores the kernel's (C, M) channels)
                scores = sum(sc.reshape(first.shape) for _, _, sc in members).reshape(-1)
                live = (_reduce(old[0], axes) > 0).reshape(-1)
                size = sum(m.size for m in old) / scores.size
                round_to = layer.round_to if granularity[0] == "channel" else 1
                groups.append((scores, live, size, round_to, finish))
    if scope == "layer":
        for scores, live, _, round_to, finish in groups:
            finish(_keep_largest(scores, live, sparsity, round_to))
    elif groups:
        units = _keep_largest(np.concatenate([g[0] / g[2] for g in groups]),
                              np.concatenate([g[1] for g in groups]), sparsity, 1)
        for (scores, *_, finish), piece in zip(groups, np.split(
                units, np.cumsum([g[0].size for g in groups])[:-1])):
            finish(piece)
    return sparsity_report(model)


def _finisher(layer, members, old, optimizer):
    """`finish(units)`: the flat 0/1 unit vector of one linked group → each member's mask
    (only losing entries), applied."""
    kind = parse_granularity(layer.granularity)[0]

    def finish(units):
        units = np.asarray(units)
        if kind == "m:n":
            masks = [units]
        elif kind == "weight":
            splits = np.cumsum([m.size for m in old])[:-1]
            masks = [u.reshape(m.shape) for u, m in zip(np.split(units, splits), old)]
        else:
            masks = [_expand(units.reshape(sc.shape), axes, m.shape)
                     for (_, axes, sc), m in zip(members, old)]
        for (name, _, _), mask, before in zip(members, masks, old):
            _apply(layer, name, (np.asarray(mask) * before).astype(before.dtype), optimizer)

    return finish


def _keep_largest(scores, live, sparsity, round_to):
    """A 0/1 vector keeping the largest live scores: `sparsity` of all units pruned (pruned
    units count), the kept count rounded up to a multiple of `round_to`."""
    ranked = np.where(live > 0, scores, -np.inf)
    keep = _keep_count(ranked.size, sparsity, round_to)
    flat = np.zeros(ranked.size)
    flat[np.argsort(-ranked, kind="stable")[:keep]] = 1.0
    flat[np.isinf(ranked)] = 0.0
    return flat


def _apply(layer, name, mask, optimizer):
    layer.pruning_masks[name].assign(mask)
    variable = layer.pruned_variable(name)
    variable.assign(to_numpy(variable) * mask.astype(to_numpy(variable).dtype))
    if optimizer is not None and getattr(optimizer, "built", False):
        for slot in keras_compat.optimizer_slots(optimizer, variable):
            slot.assign(to_numpy(slot) * mask.astype(to_numpy(slot).dtype))


def mask_counts(layer):
    """`(pruned entries, entries)` over a `make_prunable` layer's masks."""
    masks = [to_numpy(m) for m in layer.pruning_masks.values()]
    return sum(int(np.sum(m == 0)) for m in masks), sum(m.size for m in masks)


def sparsity_report(model):
    """`{layer name: pruned fraction of its prunable entries}` and `"total"`."""
    report, pruned, total = {}, 0, 0
    for layer in masked_layers(model):
        zeros, size = mask_counts(layer)
        report[layer.name] = zeros / size if size else 0.0
        pruned, total = pruned + zeros, total + size
    report["total"] = pruned / total if total else 0.0
    return report
