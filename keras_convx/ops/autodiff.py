"""Gradients of a model's loss through the current backend's autodiff (no state is changed).

The forward pass is `model.stateless_call`, so batch-norm moving statistics and other
non-trainable state are left untouched even with `training=True`.
"""

import weakref

import keras

# JAX: one compiled value-and-grad per (model, loss, training), reused across calls.
_JAX_CACHE = weakref.WeakKeyDictionary()


def loss_and_gradients(model, x, y, loss_fn, training=True):
    """(loss, [∂loss/∂v for v in model.trainable_variables]) as backend tensors.

    Args:
        model: a built `keras.Model`.
        x, y: one batch of inputs and targets.
        loss_fn: callable `loss_fn(y_true, y_pred) -> scalar or per-sample losses` (reduced by
            the mean).
        training: the `training` flag of the forward pass.
    """
    trainable = list(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]
    values = [v.value for v in trainable]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # noqa: PLC0415

        cache = _JAX_CACHE.setdefault(model, {})
        key = (id(loss_fn), bool(training))
        if key not in cache:

            def loss_of_values(vals, ntv, x_, y_):
                y_pred, _ = model.stateless_call(vals, ntv, x_, training=training)
                return keras.ops.mean(loss_fn(y_, y_pred))

            cache[key] = (jax.jit(jax.value_and_grad(loss_of_values)), loss_fn)
        loss, grads = cache[key][0](values, non_trainable, x, y)
        return loss, list(grads)

    def loss_of(*vals):
        y_pred, _ = model.stateless_call(list(vals), non_trainable, x, training=training)
        return keras.ops.mean(loss_fn(y, y_pred))

    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        tensors = [tf.identity(v) for v in values]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = loss_of(*tensors)
        grads = tape.gradient(loss, tensors)
        return loss, [g if g is not None else tf.zeros_like(t) for g, t in zip(grads, tensors)]
    if backend == "torch":
        import torch  # noqa: PLC0415

        tensors = [v.detach().clone().requires_grad_(True) for v in values]
        loss = loss_of(*tensors)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        return loss.detach(), [
            g if g is not None else torch.zeros_like(t) for g, t in zip(grads, tensors)
        ]
    raise RuntimeError(
        "Gradients need a backend with automatic differentiation: tensorflow, jax or torch. "
        f"The current Keras backend is {backend!r}."
    )


def input_gradient(fn, x):
    """∂ Σ fn(x) / ∂x through the current backend's autodiff, as a tensor shaped like `x`.

    `x` is treated as a leaf (no gradient flows past it to whatever produced it), so this is
    safe inside a training step (e.g. Grad-CAM weights computed in `compute_loss`): on JAX it
    nests `jax.grad`, on TensorFlow a `GradientTape`, on PyTorch `torch.autograd.grad` with
    gradients enabled even under `torch.no_grad()` (evaluation).
    """
    backend = keras.backend.backend()
    x = keras.ops.stop_gradient(x)
    if backend == "jax":
        import jax  # noqa: PLC0415

        return jax.grad(lambda a: keras.ops.sum(fn(a)))(x)
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return tape.gradient(total, x)
    if backend == "torch":
        import torch  # noqa: PLC0415

        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
        return grad
    raise RuntimeError(
        "Gradients need a backend with automatic differentiation: tensorflow, jax or torch. "
        f"The current Keras backend is {backend!r}."
    )
