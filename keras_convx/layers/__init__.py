"""Layers of keras_convx, one file per family."""

from keras_convx.initializers import CentredIdentity  # also keras_convx.initializers
from keras_convx.layers.e4_conv import E4Conv2D
from keras_convx.layers.group_conv import GroupConv2D
from keras_convx.layers.group_conv import GroupLiftConv2D
from keras_convx.layers.group_maps import GroupBatchNormalization
from keras_convx.layers.group_maps import GroupPooling
from keras_convx.layers.log_polar import LogPolarConv2D
from keras_convx.layers.pde import DiffusionConv2D
from keras_convx.layers.pde import HyperbolicConv2D
from keras_convx.layers.pde_graph import GraphDiffusion
from keras_convx.layers.pde_graph import GraphHyperbolic
from keras_convx.layers.filter_basis import FilterBasis
from keras_convx.layers.shared_basis import SharedBasisConv2D
from keras_convx.layers.filter_basis import apply_global_orthonormal
from keras_convx.layers.synaptic import SynapticConv2D

__all__ = [
    "CentredIdentity",
    "DiffusionConv2D",
    "GraphDiffusion",
    "GraphHyperbolic",
    "HyperbolicConv2D",
    "E4Conv2D",
    "FilterBasis",
    "GroupBatchNormalization",
    "GroupConv2D",
    "GroupLiftConv2D",
    "GroupPooling",
    "LogPolarConv2D",
    "SharedBasisConv2D",
    "SynapticConv2D",
    "apply_global_orthonormal",
]
