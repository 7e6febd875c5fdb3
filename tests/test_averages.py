"""averages: a softmax average of a constant equal in every row is dead; of rows that differ, live."""
import torch
import torch.nn as nn

from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.averages import averaged_values
from collapsekit.analysis.flow import run_flow
from invariants import check_levels


class Attention(nn.Module):
    """One attention over 6 tokens; `positional` adds a learned table to the values (rows then differ)."""

    def __init__(self, positional: bool):
        super().__init__()
        self.qk = nn.Linear(8, 16)
        self.v = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(6, 8)) if positional else None
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, -1)
        v = self.v(x) if self.pos is None else self.v(x) + self.pos
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.head((attn @ v).mean(1))


def _verdict(positional: bool):
    torch.manual_seed(0)
    model = Attention(positional)
    an = Analysis(model, torch.randn(1, 6, 8))
    keep = [torch.ones(w.shape, dtype=torch.bool) for w in an.weights]
    keep[[w.name for w in an.weights].index("v.weight")][:] = False  # the values are constants
    return model, an, run_flow(an.traced, an.weights, keep)


def test_average_of_a_broadcast_bias_is_dead():
    model, an, flow = _verdict(positional=False)
    assert list(averaged_values(an.traced.gm).values())[0].target == "v"
    assert flow.collapsed  # live attention weights average eight constant columns: constant output


def test_average_of_rows_that_differ_stays_live():
    model, an, flow = _verdict(positional=True)
    assert not flow.collapsed  # the position table makes each row's constant different


def test_both_agree_with_the_oracle_at_every_level():
    for positional in (False, True):
        torch.manual_seed(1)
        check_levels(Attention(positional), torch.randn(1, 6, 8), (0.5, 0.8, 0.95), boundary=True)
