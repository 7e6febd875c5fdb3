"""models/meta.py: a skeleton on the meta device gets every shape and flag, without running initialisers."""

import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.models.meta import on_meta
from fresh import fresh_python


class Reshaped(nn.Module):
    """An initialiser that writes values, then one that changes a tensor's shape in place."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(3, 5))
        nn.init.kaiming_normal_(self.w)
        self.register_buffer("b", torch.ones(4, 2).mul_(2.0))
        self.b.t_()  # inplace_view: must still run
        self.frozen = nn.Parameter(torch.empty(2).normal_(), requires_grad=False)


def test_skeleton_has_the_shapes_dtypes_and_flags_of_the_real_model():
    real = ck.models.create("wrn_16_2", num_classes=10, in_channels=3, input_size=16)
    with on_meta():
        skeleton = ck.models.create("wrn_16_2", num_classes=10, in_channels=3, input_size=16)
    describe = lambda m: [(n, tuple(t.shape), t.dtype, t.requires_grad)  # noqa: E731
                          for n, t in [*m.named_parameters(), *m.named_buffers()]]
    assert describe(skeleton) == describe(real)
    assert all(t.is_meta for t in [*skeleton.parameters(), *skeleton.buffers()])


def test_shape_changing_inplace_ops_still_run_and_flags_stay():
    with on_meta():
        m = Reshaped()
    assert m.w.is_meta and tuple(m.w.shape) == (3, 5)
    assert tuple(m.b.shape) == (2, 4)  # t_() ran
    assert m.w.requires_grad and not m.frozen.requires_grad
    assert torch.empty(1).device.type == "cpu"  # the default device is restored


def test_building_a_skeleton_imports_neither_dynamo_nor_sympy():
    code = ("import sys, collapsekit as ck\nfrom collapsekit.models.meta import on_meta\n"
            "with on_meta():\n    ck.models.create('resnet20', num_classes=10, in_channels=3, input_size=16)\n"
            "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))")
    assert fresh_python(code) == "[]"
