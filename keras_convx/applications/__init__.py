"""The papers' architectures as builder functions returning uncompiled `keras.Model`s."""

from keras_convx.applications.lpsc_resnet import lpsc_resnet20

__all__ = ["lpsc_resnet20"]
