"""Invariant 4 harness shared by the analyzer tests: static flow vs forward passes."""
import torch

from collapsekit.validation import probe
from collapsekit.analysis.flow import channel_dim, run_flow
from collapsekit.analysis.magnitudes import sparsity_to_count
from collapsekit.analysis.analysis import Analysis


def scramble(model, seed=0):
    """Give each prunable layer its own magnitude scale so that different layers empty first."""
    g = torch.Generator().manual_seed(seed)
    from collapsekit.analysis.prunable import find_prunable

    with torch.no_grad():
        for w in find_prunable(model):
            p = model.get_parameter(w.name)
            p.mul_(10 ** (torch.rand((), generator=g) * 2 - 1))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


def check_levels(model, example, sparsities, mt=None, channel_level=False):
    """Asserts exactness (positive copy) and soundness (real weights) at every sparsity; returns verdicts.

    At channel level the flow may keep more alive than the positive copy shows,
    never less: its deaths must be a subset of the observed ones.
    """
    an = Analysis(model, example, mt=mt)
    inputs = an.traced.example_inputs
    layer_modules = {w.name: w.module for w in an.weights if w.kind in ("conv", "linear")}
    verdicts = []
    for s in sparsities:
        keep, _, _ = an.keep_masks(sparsity_to_count(s, an.index.total))
        masks = {w.name: k for w, k in zip(an.weights, keep)}
        flow = run_flow(an.traced, an.weights, an.level(sparsity_to_count(s, an.index.total)),
                        channel_level=channel_level)

        # Exact: a positive copy's output varies with a positive input iff a kept path remains.
        pos = probe.positive_copy(model, an.weights, masks)
        g = torch.Generator().manual_seed(1)
        a = tuple(torch.rand(x.shape, generator=g, dtype=torch.float64) + 0.5 for x in inputs)
        b = tuple(torch.rand(x.shape, generator=g, dtype=torch.float64) + 0.5 for x in inputs)
        out_a, seen_a = probe.capture(pos, layer_modules, a)
        out_b, seen_b = probe.capture(pos, layer_modules, b)
        alive = any(bool(probe.varying(x, y, rtol=1e-9, atol=0).any())
                    for x, y in zip(probe.flat_outputs(out_a), probe.flat_outputs(out_b)))
        if channel_level:
            assert not flow.collapsed or not alive, f"sparsity {s}: channel level predicts a false collapse"
        else:
            assert flow.collapsed == (not alive), f"sparsity {s}: flow collapsed={flow.collapsed}, alive={alive}"
        for w in an.weights:
            if w.name not in layer_modules or not seen_a[w.name]:
                continue
            observed_alive = None
            for x, y in zip(seen_a[w.name], seen_b[w.name]):
                dim = channel_dim(w, x)
                others = tuple(d for d in range(x.ndim) if d != dim)
                v = probe.varying(x, y, rtol=1e-9, atol=0).any(dim=others)
                observed_alive = v if observed_alive is None else observed_alive | v
            observed_dead = torch.nonzero(~observed_alive).flatten().tolist()
            predicted = flow.dead_channels.get(w.name, [])
            if channel_level:
                assert set(predicted) <= set(observed_dead), (s, w.name)
            else:
                assert predicted == observed_dead, (s, w.name)

        # Sound: with the real masked weights, predicted-dead channels and a predicted
        # collapsed output are constant over random inputs at several scales.
        real = probe.masked_copy(model, masks)
        runs = [probe.capture(real, layer_modules, x) for x in probe.random_inputs(inputs, batch=6)]
        for name, channels in flow.dead_channels.items():
            dim = channel_dim(next(w for w in an.weights if w.name == name), runs[0][1][name][0])
            vals = torch.cat([seen[name][0].index_select(dim, torch.tensor(channels)) for _, seen in runs])
            assert not probe.varying(vals, vals[:1].expand_as(vals), rtol=1e-5, atol=1e-6).any(), (s, name)
        if flow.collapsed:
            assert probe.output_is_constant(real, inputs), f"sparsity {s}: predicted collapse, output varies"
        verdicts.append(flow)
    return verdicts
