"""Layer graph: bypassable vs bottleneck layers, rejoin points, effective depth."""
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.graph import build_graph, effective_depth
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.trace import trace
from fresh import fresh_python


def graph_of(model, shape):
    weights = find_prunable(model)
    return build_graph(trace(model, torch.randn(*shape)), weights)


def test_wrn_residual_convs_are_bypassable_and_stem_and_head_are_bottlenecks():
    model = ck.models.create("wrn_16_2", num_classes=10, in_channels=3, input_size=8)
    lg = graph_of(model, (1, 3, 8, 8))
    names = list(lg.bypassable)
    stem, head = names[0], names[-1]
    assert not lg.bypassable[stem] and not lg.bypassable[head]
    inner = [n for n in names if "conv" in n]
    assert inner and all(lg.bypassable[n] for n in inner)
    assert all(lg.rejoins_at[n] is not None and lg.rejoins_at[n].startswith("add") for n in inner)


def test_every_mobilenet_v1_layer_is_a_bottleneck():
    model = ck.models.create("mobilenet_v1", num_classes=10, in_channels=3, input_size=8, width_mult=0.25)
    lg = graph_of(model, (1, 3, 8, 8))
    assert len(lg.bypassable) == 28  # 1 stem + 13 x (depthwise + pointwise) + classifier
    assert not any(lg.bypassable.values())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.branch = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.branch(h))


def test_effective_depth_drops_when_a_branch_is_emptied_and_is_zero_when_cut():
    lg = graph_of(Residual(), (1, 4))
    assert effective_depth(lg, set()) == 3
    assert effective_depth(lg, {"branch.weight"}) == 2
    assert effective_depth(lg, {"stem.weight"}) == 0
    assert lg.bypassable == {"stem.weight": False, "branch.weight": True, "head.weight": False}


def test_shared_weight_used_twice_is_judged_over_all_its_uses():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # one tensor, two modules

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = Tied()
    weights = find_prunable(model)
    assert [w.name for w in weights] == ["a.weight"] and weights[0].aliases == ("b.weight",)
    lg = build_graph(trace(model, torch.randn(1, 4)), weights)
    assert len(lg.layer_nodes["a.weight"]) == 2
    assert lg.bypassable["a.weight"] is False  # emptying the one tensor cuts both paths


def test_weights_inside_an_opaque_module_belong_to_its_node():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.enc(self.embed(x)).mean(1))

    model = Encoder()
    lg = graph_of(model, (1, 5, 6))
    inner = [name for name in lg.layer_nodes if name.startswith("enc.")]
    assert len(inner) == 4
    assert all(lg.layer_nodes[name] == lg.layer_nodes[inner[0]] != () for name in inner)


def test_networkx_is_imported_by_the_first_analysis_not_by_importing_collapsekit():
    code = ("import sys, torch\nimport collapsekit.analysis.analysis as A\nbefore = 'networkx' in sys.modules\n"
            "import collapsekit as ck\n"
            "m = ck.models.create('resnet20', num_classes=10, in_channels=3, input_size=16)\n"
            "r = A.Analysis(m, torch.randn(1, 3, 16, 16)).report([0.5])\n"
            "print(before, 'networkx' in sys.modules, len(r.layers))")
    assert fresh_python(code) == "False True 22"  # 21 convs (2 of them 1x1 shortcuts) and the classifier


def test_a_fresh_processs_networkx_import_starts_beside_the_trace_and_the_graph_waits_for_it():
    # import_beside starts the import in its own thread; networkx() in the caller then returns the same module,
    # after the import is complete (Python's per-module import lock), never a half-initialised one.
    code = ("import sys, threading\nimport collapsekit.analysis.graph as g\n"
            "g.import_beside()\nnames = [t.name for t in threading.enumerate()]\n"
            "nx = g.networkx()\nprint('collapsekit-import' in names, hasattr(nx, 'DiGraph'), "
            "hasattr(nx, 'immediate_dominators'))\ng.import_beside()\n"
            "print(sum(t.name == 'collapsekit-import' for t in threading.enumerate()))")
    started, second = fresh_python(code).splitlines()
    assert started == "True True True"
    assert second == "0"  # imported already: no second thread


def test_a_failing_networkx_import_beside_the_trace_prints_nothing_and_the_graph_raises_it():
    import subprocess
    import sys

    code = ("import sys, importlib.abc\n"
            "class NoNetworkx(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'networkx':\n"
            "            raise ImportError('no networkx here')\n"
            "sys.meta_path.insert(0, NoNetworkx())\n"
            "import threading\nimport collapsekit.analysis.graph as g\ng.import_beside()\n"
            "[t.join() for t in threading.enumerate() if t.name == 'collapsekit-import']\n"
            "try:\n    g.networkx()\nexcept ImportError as exc:\n    print('raised', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "raised no networkx here" and done.stderr == ""
