"""FastGRNN sequence classifier (Kusupati et al. 2018, "FastGRNN: A Fast, Accurate, Stable and Tiny
Kilobyte Sized Gated Recurrent Neural Network")."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.models.registry import register


class FastGRNNClassifier(nn.Module):
    """FastGRNN cell unrolled over a fixed `seq_len`, then Linear on the last hidden state.

    Per step (Kusupati et al. 2018, Eq. 4-5), with W and U shared by gate and update:
        z_t  = sigmoid(W x_t + U h_{t-1} + b_z)
        h~_t = tanh(W x_t + U h_{t-1} + b_h)
        h_t  = (sigmoid(zeta) (1 - z_t) + sigmoid(nu)) * h~_t + z_t * h_{t-1}
    W and U are nn.Linear (no bias) so Global MP prunes them like any layer. The loop
    runs over the constant `seq_len`, so torch.fx.symbolic_trace unrolls it; h_0 = 0
    makes the first step's U term vanish, so step 0 skips U instead of building zeros.
    """

    def __init__(self, num_classes: int, input_features: int, seq_len: int, hidden_size: int = 32,
                 zeta_init: float = 1.0, nu_init: float = -4.0):
        super().__init__()
        self.seq_len = seq_len
        self.W = nn.Linear(input_features, hidden_size, bias=False)
        self.U = nn.Linear(hidden_size, hidden_size, bias=False)
        self.bias_gate = nn.Parameter(torch.ones(hidden_size))
        self.bias_update = nn.Parameter(torch.ones(hidden_size))
        # zeta_init / nu_init follow the authors' EdgeML defaults.
        self.zeta = nn.Parameter(torch.tensor(float(zeta_init)))
        self.nu = nn.Parameter(torch.tensor(float(nu_init)))
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wx = self.W(x)  # [B, T, H]: the input projection of every step at once
        zeta, nu = torch.sigmoid(self.zeta), torch.sigmoid(self.nu)
        h = None
        for t in range(self.seq_len):
            pre = wx[:, t] if h is None else wx[:, t] + self.U(h)
            z = torch.sigmoid(pre + self.bias_gate)
            h_tilde = torch.tanh(pre + self.bias_update)
            h_new = (zeta * (1 - z) + nu) * h_tilde
            h = h_new if h is None else h_new + z * h
        return self.fc(h)


@register("fastgrnn", layout="sequence")
def fastgrnn(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, hidden_size: int = 32,
             **kw) -> nn.Module:
    """Returns a FastGRNN classifier (Kusupati et al. 2018) for inputs [B, T, F], T = input_size, F = in_channels.

    For UCI-HAR that is input_size=128 steps of in_channels=9 features.
    """
    return FastGRNNClassifier(num_classes, in_channels, input_size, hidden_size)
