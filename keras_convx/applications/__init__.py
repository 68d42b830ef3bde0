"""The papers' architectures as builder functions returning uncompiled `keras.Model`s.

Every builder makes a channels_last model, whatever `keras.config.image_data_format()` says
(it is set to channels_last while the model is built, then restored: build models from one
thread at a time)."""

from keras_convx.applications.e4net import e4_resnet18
from keras_convx.applications.e4net import e4net_mnist_rot
from keras_convx.applications.lpsc_resnet import lpsc_resnet20
from keras_convx.applications.pde_net import pde_net
from keras_convx.applications.resnet_cifar import resnet_cifar

__all__ = ["e4_resnet18", "e4net_mnist_rot", "lpsc_resnet20", "pde_net", "resnet_cifar"]
