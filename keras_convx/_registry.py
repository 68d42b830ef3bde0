"""The one registration point for keras_convx's public serializable classes."""

import keras

PACKAGE = "keras_convx"


def register(cls):
    """Register `cls` for `.keras` (de)serialization as `keras_convx>ClassName`.

    Every public layer, regularizer, constraint, callback and schedule of the package is
    decorated with this, once, so models using them reload without `custom_objects`.

    Example:

    ```python
    @register
    class MyLayer(keras.layers.Layer):
        ...
    ```
    """
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
