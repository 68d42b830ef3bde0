"""The one registration point for keras_convx's public serializable classes."""

import keras

PACKAGE = "keras_convx"


def register(cls=None, *, name=None):
    """Register `cls` for `.keras` (de)serialization as `keras_convx>ClassName`.

    `name` overrides the registered name where two public classes share a class name in
    different namespaces (`regularizers.Orthonormal` / `constraints.Orthonormal`).

    Every public layer, regularizer, constraint, callback and schedule of the package is
    decorated with this, once, so models using them reload without `custom_objects`.

    Example:

    ```python
    @register
    class MyLayer(keras.layers.Layer):
        ...
    ```
    """
    if cls is None:
        return lambda c: register(c, name=name)
    return keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)
