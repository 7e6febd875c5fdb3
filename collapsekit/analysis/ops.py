"""Op kinds: which modules, functions and methods are activations, dropouts, pools, norms and joins.

One list per kind (Torch-Pruning's `ops.py` habit), read by every analysis pass
(flow_rules.py, values.py, intervals.py, averages.py) and by compaction
(pruning/compact.py), so an op added to a kind is known to all of them. Each
pass still says what a kind means to it (the flow: structure kept; compaction:
channels kept; the sign pass: signs kept) where it files its rules. Functions
include their torch.ops.aten overloads (graphs from torch.export).
"""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.analysis.rules import aten

# Elementwise activations without per-channel state: a per-element map that never joins elements.
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
                      nn.Tanhshrink)
PARAMETRIC_ACTIVATION_MODULES = (nn.PReLU,)  # a slope per channel (or one): elementwise, with state
ACTIVATION_FUNCTIONS = (F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
                        F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid,
                        torch.tanh,
                        *aten("relu.default", "sigmoid.default", "tanh.default", "gelu.default", "silu.default",
                              "hardtanh.default", "hardswish.default", "relu6.default", "relu_.default",
                              "gelu_.default", "silu_.default", "hardtanh_.default", "hardswish_.default",
                              "softplus.default", "mish.default", "leaky_relu.default", "elu.default",
                              "log_sigmoid.default", "hardsigmoid.default"))
ACTIVATION_METHODS = ("relu", "relu_", "sigmoid", "tanh")

# The ReLU family: zero on the negatives (the value level can cut them).
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6)

# Dropouts: the identity in eval mode, and a per-element mask in training.
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, *aten("dropout.default", "dropout_.default"))
DROPOUT_METHODS = ("dropout",)

BATCH_NORM_MODULES = (nn.modules.batchnorm._BatchNorm,)  # eval mode: a per-channel affine map

# Pooling over windows of positions, channel by channel.
MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVG_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d)
ADAPTIVE_MAX_POOL_MODULES = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
POOL_MODULES = (*MAX_POOL_MODULES, *AVG_POOL_MODULES, *ADAPTIVE_MAX_POOL_MODULES)
MAX_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, *aten("max_pool2d.default"))
AVG_POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                      F.adaptive_avg_pool3d,
                      *aten("avg_pool2d.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
                            "adaptive_avg_pool1d.default", "avg_pool1d.default", "avg_pool3d.default",
                            "adaptive_avg_pool3d.default"))
ADAPTIVE_MAX_POOL_FUNCTIONS = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)

# Softmax over a dim: each row normalised to sum one (attention weights average with them) ...
SOFTMAX_MODULES = (nn.Softmax, nn.Softmin)
SOFTMAX_FUNCTIONS = (F.softmax, torch.softmax, *aten("_softmax.default", "softmax.int"))
SOFTMAX_METHODS = ("softmax",)
# ... and its logarithm, which mixes a row the same way but does not sum to one.
LOG_SOFTMAX_MODULES = (nn.LogSoftmax,)
LOG_SOFTMAX_FUNCTIONS = (F.log_softmax, torch.log_softmax, *aten("_log_softmax.default", "log_softmax.int"))
LOG_SOFTMAX_METHODS = ("log_softmax",)

# Elementwise arithmetic between tensors (residual adds, gates): operands broadcast together.
ARITHMETIC_FUNCTIONS = (operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                        torch.add, torch.sub, torch.mul)
ARITHMETIC_METHODS = ("add", "add_", "sub", "sub_", "mul", "mul_", "__add__", "__mul__", "__sub__")

CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
