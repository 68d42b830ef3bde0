"""The papers' architectures as builder functions returning uncompiled `keras.Model`s."""

from keras_convx.applications.e4net import e4_resnet18
from keras_convx.applications.e4net import e4net_mnist_rot
from keras_convx.applications.lpsc_resnet import lpsc_resnet20
from keras_convx.applications.pde_net import pde_net
from keras_convx.applications.resnet_cifar import resnet_cifar

__all__ = ["e4_resnet18", "e4net_mnist_rot", "lpsc_resnet20", "pde_net", "resnet_cifar"]
