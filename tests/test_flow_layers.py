"""Layer autograd of the channel flow: blocked linear backward, channel-level conv backward and dense layers
give autograd's answers (up to positive scaling, which carries no meaning in the flow)."""
import torch


def test_linear_backward_in_row_blocks_matches_autograd(monkeypatch):
    import collapsekit.analysis.flow_layers as layers

    monkeypatch.setattr(layers, "_BLOCK", 7)  # a few rows per block
    torch.manual_seed(0)
    keep = torch.rand(9, 5) > 0.6
    for x, g in [((torch.rand(3, 4, 5) > 0.5).float(), (torch.rand(3, 4, 9) > 0.5).float()),  # mixed patterns
                 (torch.ones(3, 4, 5), (torch.rand(3, 4, 9) > 0.5).float()),  # one liveness pattern
                 ((torch.rand(3, 4, 5) > 0.5).float(), torch.ones(3, 4, 9)),  # one usedness pattern
                (torch.ones(3, 4, 5), torch.ones(3, 4, 9))]:  # everything reached
        xx, w = x.clone().requires_grad_(True), keep.float().requires_grad_(True)
        gx_want, gw_want = torch.autograd.grad(torch.nn.functional.linear(xx, w), (xx, w), g)
        gx, reached = layers.linear_backward(x, keep, g)
        if reached is layers.EVERYWHERE:
            reached = torch.ones(keep.shape, dtype=torch.bool)
        # only positivity carries meaning in the flow: values may differ by positive scaling
        assert torch.equal(gx > 0, gx_want > 0) and torch.equal(reached, gw_want > 0)
        out = layers.apply_keep(torch.nn.functional.linear, x, keep)
        assert torch.equal(out > 0, torch.nn.functional.linear(x, keep.float()) > 0)


def test_channel_conv_backward_equals_autograd():
    """The written-out backward of a channel-level conv gives autograd's gradient and reached pairs."""
    from collapsekit.analysis.flow_layers import EVERYWHERE, ChannelConv

    gen = torch.Generator().manual_seed(0)
    everywhere = 0
    for groups, spatial, density in ((1, (5, 5), 0.5), (2, (1, 1), 0.5), (4, (3, 2), 0.5), (1, (2, 2), 1.0),
                                     (2, (3, 3), 1.0)):
        o, i = 8, 8
        op = ChannelConv(groups, (1, o, *spatial))
        x = (torch.rand(1, i, *spatial, generator=gen) < density).float().requires_grad_(True)
        conn = torch.rand(o, i // groups, generator=gen) > 0.6
        w = conn.float().requires_grad_(True)
        out = op(x, w)
        g = (torch.rand(out.shape, generator=gen) < density * 1.4).float()
        gx, gw = torch.autograd.grad(out, (x, w), g)
        mine_gx, reached = op.backward(x.detach(), conn, g)
        assert torch.equal(mine_gx.expand(x.shape), gx)
        if reached is EVERYWHERE:  # every input channel live and every output used: all pairs
            everywhere += 1
            reached = torch.ones(conn.shape, dtype=torch.bool)
        assert torch.equal(reached, gw > 0)
    assert everywhere == 2


def test_a_linear_whose_weight_is_not_pruned_is_a_sum_not_a_matmul():
    """A tied vocabulary head (no keep-mask) reads as a broadcast view of ones: each output is live iff some
    input of its row is, and gradients reach every input of a row some used output reads."""
    from collapsekit.analysis import flow_layers, flow_rules

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 5, 7, generator=gen) > 0.6).float()
    x[0, 1] = 0  # a row with no live input
    ones = torch.ones((), dtype=torch.float32).expand(11, 7)
    assert flow_layers.all_ones_view(ones) and not flow_layers.all_ones_view(torch.ones(11, 7))
    assert not flow_layers.all_ones_view(torch.zeros(()).expand(11, 7))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = flow_rules._linear_function(None, xa, ones)
    want = torch.nn.functional.linear(xb, torch.ones(11, 7))
    assert got.shape == want.shape and torch.equal(got > 0, want > 0)
    g = (torch.rand(want.shape, generator=gen) > 0.7).float()
    (ga,), (gb,) = torch.autograd.grad(got, xa, g), torch.autograd.grad(want, xb, g)
    assert torch.equal(ga > 0, gb > 0)



def test_a_sparse_keep_answers_as_its_dense_mask():
    from collapsekit.analysis.flow_layers import EffectiveWeights, Outer, SparseKeep, any_kept, kept_on, \
        linear_backward

    torch.manual_seed(0)
    for shape in [(9, 5), (4, 13)]:
        dense = torch.rand(shape) > 0.8
        sparse = SparseKeep.of(torch.nonzero(dense.flatten()).flatten(), shape)
        assert torch.equal(sparse.mask, dense) and torch.equal(sparse.t().mask, dense.t())
        rows, cols = torch.rand(shape[0]) > 0.4, torch.rand(shape[1]) > 0.4
        assert torch.equal(any_kept(sparse, cols, dim=1), any_kept(dense, cols, dim=1))
        assert torch.equal(any_kept(sparse, rows, dim=0), any_kept(dense, rows, dim=0))
        assert kept_on(Outer(rows, cols), sparse) == kept_on(Outer(rows, cols), dense) == int(
            (dense & rows[:, None] & cols[None, :]).sum())
        x, g = torch.ones(2, 3, shape[1]), (torch.rand(2, 3, shape[0]) > 0.5).float()  # one liveness pattern
        g[..., 0] = 0.0  # an output no position uses: not every position reached
        gx_s, reached_s = linear_backward(x, sparse, g)
        gx_d, reached_d = linear_backward(x, dense, g)
        assert torch.equal(gx_s > 0, gx_d > 0) and torch.equal(reached_s.dense(), reached_d.dense())
        counts = []
        for keep in (sparse, dense):  # the effective count recorded from either
            effective = EffectiveWeights()
            effective.applied["w"], effective.interpreted = 1, {"w"}
            effective.record("w", keep, reached_s)
            counts.append(effective.hits["w"])
        assert counts[0] == counts[1] == kept_on(reached_d, dense)


def test_few_liveness_patterns_answer_as_the_matmul():
    """A class token (one row unlike the others) or padding: per-pattern answers, the same positivity."""
    from collapsekit.analysis.flow_layers import SparseKeep, apply_keep, kept_on, linear_backward

    torch.manual_seed(1)
    keep = torch.rand(11, 6) > 0.7
    sparse = SparseKeep.of(torch.nonzero(keep.flatten()).flatten(), keep.shape)
    rows_x = (torch.rand(3, 6) > 0.4).float()
    rows_g = (torch.rand(2, 11) > 0.5).float()
    x = rows_x[torch.tensor([0, 1, 1, 2, 1, 0])].view(2, 3, 6)  # 3 liveness patterns over 6 positions
    g = rows_g[torch.tensor([0, 1, 1, 0, 1, 1])].view(2, 3, 11)  # 2 usedness patterns
    xx, w = x.clone().requires_grad_(True), keep.float().requires_grad_(True)
    gx_want, gw_want = torch.autograd.grad(torch.nn.functional.linear(xx, w), (xx, w), g)
    for k in (keep, sparse):
        assert torch.equal(apply_keep(torch.nn.functional.linear, x, k) > 0,
                           torch.nn.functional.linear(x, keep.float()) > 0)
        gx, reached = linear_backward(x, k, g)
        assert torch.equal(gx > 0, gx_want > 0) and torch.equal(reached, gw_want > 0)
        assert kept_on(reached, k) == int((keep & (gw_want > 0)).sum())
