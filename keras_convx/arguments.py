"""Argument validation for every public class and function of keras_convx.

One module, in the style of Keras' `keras/src/utils/argument_validation.py`: each
`standardize_*`-like helper takes the argument's NAME and value, returns the normalised value
(a Python int, float, bool, str or tuple) and otherwise raises before any work is done:

- `TypeError` when the value is of the wrong kind (a string where a number is expected),
- `ValueError` when it is of the right kind but outside the accepted values (NaN, inf, a
  negative epsilon, an unknown option),

and the message always names the argument and the accepted values, e.g.
"Expected momentum to be a finite number in [0, 1). Received: momentum=5.0".

NumPy scalars (`np.float32(0.1)`, `np.int64(3)`) are accepted wherever Python numbers are;
`bool` is never taken for a number.

This is a leaf module: it imports nothing of keras_convx, so every floor may use it (the
maths in `keras_convx.ops` validates the arguments of its public functions with it too).

Example:

>>> from keras_convx import arguments
>>> arguments.number("epsilon", np.float32(1e-3), minimum=0, exclusive_minimum=True)
0.0010000000474974513
>>> arguments.integer("rings", 0)
Traceback (most recent call last):
ValueError: Expected rings to be an int >= 1. Received: rings=0
"""

import math
import numbers

import keras
import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


def is_int(value):
    """True for Python and NumPy integers (not bool)."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    """True for Python and NumPy real numbers (not bool, not strings)."""
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def _interval(minimum, maximum, exclusive_minimum, exclusive_maximum):
    if minimum is None and maximum is None:
        return ""
    if maximum is None:
        return f" {'>' if exclusive_minimum else '>='} {minimum:g}"
    if minimum is None:
        return f" {'<' if exclusive_maximum else '<='} {maximum:g}"
    left = "(" if exclusive_minimum else "["
    right = ")" if exclusive_maximum else "]"
    return f" in {left}{minimum:g}, {maximum:g}{right}"


def _in_interval(value, minimum, maximum, exclusive_minimum, exclusive_maximum):
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        return False
    if maximum is not None and (value > maximum or (exclusive_maximum and value == maximum)):
        return False
    return True


def number(name, value, minimum=None, maximum=None, *, exclusive_minimum=False,
           exclusive_maximum=False, allow_none=False):
    """A finite real number in the given interval → float.

    Args:
        name: the argument's name (for the message).
        value: the value received.
        minimum, maximum: bounds, or None for none.
        exclusive_minimum, exclusive_maximum: open ends.
        allow_none: accept (and return) None.

    Raises:
        TypeError: not a real number (str, bool, array, ...).
        ValueError: NaN, ±inf, or outside the interval.
    """
    if value is None and allow_none:
        return None
    accepted = f"a finite number{_interval(minimum, maximum, exclusive_minimum, exclusive_maximum)}"
    if allow_none:
        accepted += " or None"
    if not is_real(value):
        raise TypeError(f"Expected {name} to be {accepted}. Received: {name}={value!r} "
                        f"(of type {type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or not _in_interval(value, minimum, maximum, exclusive_minimum,
                                                     exclusive_maximum):
        raise ValueError(f"Expected {name} to be {accepted}. Received: {name}={value!r}")
    return value


def integer(name, value, minimum=1, maximum=None):
    """An int in [minimum, maximum] → int; TypeError if not an int, ValueError if out of range."""
    accepted = f"an int{_interval(minimum, maximum, False, False)}"
    if not is_int(value):
        raise TypeError(f"Expected {name} to be {accepted}. Received: {name}={value!r}")
    if not _in_interval(value, minimum, maximum, False, False):
        raise ValueError(f"Expected {name} to be {accepted}. Received: {name}={value}")
    return int(value)


def boolean(name, value):
    """A Python or NumPy bool → bool; TypeError otherwise (0/1 and strings are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected {name} to be a bool. Received: {name}={value!r}")
    return bool(value)


def choice(name, value, accepted, lower=True):
    """`value.lower()` (`value` with `lower=False`: case-sensitive options such as "A"/"B") if
    it is one of `accepted` (strings); ValueError naming `name` otherwise."""
    if not isinstance(value, str) or (value.lower() if lower else value) not in accepted:
        raise ValueError(f"Expected {name} to be one of {list(accepted)}. Received: {name}={value!r}")
    return value.lower() if lower else value


def data_format(value):
    """`None` → `keras.config.image_data_format()`; validated otherwise."""
    return choice("data_format", value or keras.config.image_data_format(), DATA_FORMATS)


def pair(name, value, minimum=1):
    """An int or a pair of ints ≥ `minimum` → a tuple of 2 ints."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(is_int, value)):
        raise TypeError(f"Expected {name} to be an int or a tuple of 2 ints. Received: {name}={value!r}")
    if min(value) < minimum:
        raise ValueError(f"Expected {name} to be >= {minimum}. Received: {name}={tuple(value)}")
    return (int(value[0]), int(value[1]))


def odd_kernel_size(value):
    """An odd int ≥ 1 (or a pair of equal odd ints) → int; ValueError naming kernel_size."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if value[0] != value[1]:
            raise ValueError(
                "Expected kernel_size to be square (rotations map a k×k window onto itself). "
                f"Received: kernel_size={value!r}"
            )
        value = value[0]
    k = integer("kernel_size", value)
    if k % 2 == 0:
        raise ValueError(
            f"Expected kernel_size to be an odd int (the group acts about the window's centre "
            f"pixel). Received: kernel_size={value!r}"
        )
    return k


def fraction(name, value, allow_zero=True):
    """A sparsity-like fraction in [0, 1) (or (0, 1) without zero) → float."""
    return number(name, value, 0.0, 1.0, exclusive_minimum=not allow_zero,
                  exclusive_maximum=True)


def array(name, value, ndim=None):
    """Any array-like (NumPy array, list, a backend's tensor, `torch.nn.Parameter`) → NumPy.

    Torch tensors that require grad (parameters from a `state_dict` of a model in training
    mode, or `model.parameters()`) are detached and moved to the CPU first. `ndim` is an int
    or a tuple of accepted ranks.
    """
    detach = getattr(value, "detach", None)
    if callable(detach):  # torch.Tensor / torch.nn.Parameter (without importing torch)
        value = detach()
        cpu = getattr(value, "cpu", None)
        value = cpu() if callable(cpu) else value
    try:
        result = np.asarray(value)
    except Exception as error:  # e.g. a ragged list, an object without __array__
        raise TypeError(f"Expected {name} to be an array or tensor. Received: "
                        f"{name} of type {type(value).__name__}") from error
    if not (np.issubdtype(result.dtype, np.number) or result.dtype == np.bool_):
        raise TypeError(f"Expected {name} to be a numeric array or tensor. Received: "
                        f"{name} of dtype {result.dtype}")
    accepted = (ndim,) if isinstance(ndim, int) else ndim
    if accepted is not None and result.ndim not in accepted:
        ranks = " or ".join(str(r) for r in accepted)
        raise ValueError(f"Expected {name} to have rank {ranks}. Received: "
                         f"{name}.shape={result.shape}")
    return result


def members(name, value, candidates, kind, accept=None):
    """The members of `candidates` (objects with a `.name`, such as layers) that `value`
    selects, in `value`'s order: None → all of them; otherwise one member or name, or any
    iterable of them (not a string). TypeError for another kind of value; ValueError for a name or
    object that is not among the candidates (the message lists the candidates' names), except
    an object for which `accept(object)` is true (e.g. a layer of the right class outside
    the model).

    >>> class Layer:
    ...     def __init__(self, name):
    ...         self.name = name
    >>> conv, head = Layer("conv"), Layer("head")
    >>> [m.name for m in members("layers", "head", [conv, head], "layers")]
    ['head']
    >>> members("layers", ["conv", "cnov"], [conv, head], "layers")
    Traceback (most recent call last):
    ValueError: Expected layers to name layers of the model: ['conv', 'head']. Received: 'cnov'
    """
    candidates = list(candidates)
    if value is None:
        return candidates
    one = isinstance(value, str) or hasattr(value, "name") or not hasattr(value, "__iter__")
    items = [value] if one else list(value)
    by_name = {getattr(c, "name", None): c for c in candidates}
    chosen = []
    for item in items:
        if isinstance(item, str):
            member = by_name.get(item)
        elif hasattr(item, "name"):
            known = any(item is c for c in candidates) or (accept is not None and accept(item))
            member = item if known else None
        else:
            raise TypeError(f"Expected {name} to be {kind} or their names (a list of them). "
                            f"Received: {name} containing {item!r}")
        if member is None:
            raise ValueError(f"Expected {name} to name {kind} of the model: {sorted(by_name)}. "
                             f"Received: {getattr(item, 'name', item)!r}")
        if not any(member is c for c in chosen):
            chosen.append(member)
    return chosen
