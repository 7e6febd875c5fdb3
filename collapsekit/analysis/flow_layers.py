"""Memory-bounded layer autograd for the channel flow: weighted layers applied to bool keep-masks.

A weighted layer runs on its keep-mask as 0/1 floats, but the float mask (and
its gradient) exists only while that layer runs, forward or backward, so the
flow's peak memory stays near one layer's worth: between the passes each mask
waits packed one bit per weight (`boolops.pack_bits`), or not built at all
(`LazyKeep`) where a linear layer's kept rows and columns answer. Large linear
layers go a block of rows at a time (`heap.row_blocks`). The backward pass
records, per layer, which weight positions lie on an input-to-output path;
`EffectiveWeights` keeps those records and counts effective weights from them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from collapsekit.analysis.boolops import all_true, any_along, any_true, as_float, count_bits, count_true, greater, \
    outer, pack_bits, rows_alike, unpack_bits
from collapsekit.analysis.heap import release_after, row_blocks


class LayerOnKeep(torch.autograd.Function):
    """A weighted layer on a bool keep-mask: the float mask and its gradient exist only
    while this layer runs, so the flow's peak memory stays near one layer's worth."""

    @staticmethod
    def forward(ctx, x, keep, op, record, lines=None):
        ctx.op, ctx.record, ctx.shape, ctx.lines = op, record, keep.shape, lines
        ctx.input_leaf = x.is_leaf  # the flow's input itself: nothing reads its gradient
        ctx.save_for_backward(x)
        if isinstance(op, ChannelConv):  # a small [O, I] connectivity: kept as is, in both dtypes
            ctx.conn, ctx.weights = keep, as_float(keep, x.dtype)
            return op(x, ctx.weights)
        out = apply_keep(op, x, keep, lines)
        ctx.sparse = keep if isinstance(keep, SparseKeep) else None  # O(kept): waits as it is
        # 1 bit per weight until backward: every layer's mask waits there (a lazy one only if it was built)
        built = keep.built if isinstance(keep, LazyKeep) else None if ctx.sparse is not None else keep
        ctx.packed = pack_bits(built) if built is not None else None
        ctx.make = keep.make if isinstance(keep, LazyKeep) else None
        return out

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if isinstance(ctx.op, ChannelConv):
            gx, reached = ctx.op.backward(x, ctx.weights, g)
            ctx.record(reached, ctx.conn)
            return gx, None, None, None, None
        keep = ctx.sparse if ctx.sparse is not None else unpack_bits(ctx.packed, ctx.shape) \
            if ctx.packed is not None else LazyKeep(ctx.make, ctx.shape)
        if ctx.op is F.linear and len(ctx.shape) == 2:
            gx, reached = linear_backward(x, keep, g, ctx.lines)
            ctx.record(reached, keep)
        else:
            with torch.enable_grad():
                xx = x.detach().requires_grad_(not ctx.input_leaf)
                w = as_float(keep, x.dtype).requires_grad_(True)
                # A scalar's gradient: autograd's explicit-gradient path imports sympy (the cold start).
                # The input's own gradient is never read: a patch-embedding conv's costs most of its backward.
                wanted = (w,) if ctx.input_leaf else (xx, w)
                *gx, gw = torch.autograd.grad((ctx.op(xx, w) * g).sum(), wanted)
                gx = gx[0] if gx else None
            ctx.record(gw > 0, keep)
        del keep
        release_after(int(np.prod(ctx.shape)))
        return gx, None, None, None, None


class LazyKeep:
    """A linear layer's keep-mask, built on first use: where its input is live and its output used
    everywhere, the row and column maxima (connectivity.KeptLines) answer and no mask is read."""

    def __init__(self, make, shape):
        self.make, self.shape, self.built = make, tuple(shape), None

    @property
    def mask(self) -> torch.Tensor:
        if self.built is None:
            self.built = self.make()
        return self.built


class SparseKeep:
    """A 2-D keep-mask given by its kept positions (`rows[j]`, `cols[j]`), for a layer that keeps few weights
    (MagnitudeIndex.kept_positions): which rows keep a weight reading a live input, which columns one read by
    a used output, and how many kept weights lie on a path then cost O(kept), not passes over every weight.
    The dense mask is built only where a question needs it (`mask`)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape):
        self.rows, self.cols, self.shape, self.built = rows, cols, tuple(shape), None

    @classmethod
    def of(cls, positions: torch.Tensor, shape) -> "SparseKeep":
        return cls(torch.div(positions, shape[1], rounding_mode="floor"), positions % shape[1], shape)

    @property
    def mask(self) -> torch.Tensor:
        if self.built is None:
            self.built = torch.zeros(self.shape, dtype=torch.bool)
            self.built[self.rows, self.cols] = True
        return self.built

    def t(self) -> "SparseKeep":
        return SparseKeep(self.cols, self.rows, self.shape[::-1])

    def any_rows(self, along_cols: torch.Tensor) -> torch.Tensor:
        """Bool per row: some kept weight of the row lies in a column where `along_cols` holds."""
        out = torch.zeros(self.shape[0], dtype=torch.bool)
        out[self.rows[along_cols[self.cols]]] = True
        return out

    def any_cols(self, along_rows: torch.Tensor) -> torch.Tensor:
        """Bool per column: some kept weight of the column lies in a row where `along_rows` holds."""
        out = torch.zeros(self.shape[1], dtype=torch.bool)
        out[self.cols[along_rows[self.rows]]] = True
        return out

    def count(self, rows: torch.Tensor, cols: torch.Tensor) -> int:
        """Kept weights in a row where `rows` holds and a column where `cols` holds."""
        return int((rows[self.rows] & cols[self.cols]).sum())


class Outer(NamedTuple):
    """Reached positions [O, I] of a layer whose outputs share one usedness pattern or whose inputs share one
    liveness pattern: `used[o] and live[i]`, kept as its two vectors until a count needs more."""

    used: torch.Tensor
    live: torch.Tensor

    def t(self) -> "Outer":
        return Outer(self.live, self.used)

    def all(self) -> bool:
        return all_true(self.used) and all_true(self.live)

    def dense(self) -> torch.Tensor:
        return outer(self.used, self.live)


def keep_tensor(keep) -> torch.Tensor:
    return keep.mask if isinstance(keep, (LazyKeep, SparseKeep)) else keep


def kept_on(reached, keep) -> int:
    """Kept weights of `keep` at the `reached` positions (a bool [O, I] or an Outer)."""
    if isinstance(reached, Outer):
        if isinstance(keep, SparseKeep):
            return keep.count(reached.used, reached.live)
        reached = reached.dense()
    if isinstance(keep, SparseKeep):
        return int(reached[keep.rows, keep.cols].sum())
    return count_true(reached & keep_tensor(keep))


def dense_reached(reached) -> torch.Tensor:
    return reached.dense() if isinstance(reached, Outer) else reached


def transposed_record(record, shape: tuple[int, ...]):
    """`record(name, kept, reached)` for a weight of `shape` applied as F.linear on its transpose: the
    transposed keep-mask and reached positions turned back to the weight's own orientation (views)."""
    def back(name, kept_t, reached):
        # A SparseKeep, a tensor or an Outer transposes itself (t()); a lazy mask waits to be built.
        kept = LazyKeep(lambda: keep_tensor(kept_t).t(), shape) if isinstance(kept_t, LazyKeep) else kept_t.t()
        record(name, kept, reached if reached is EVERYWHERE else reached.t())

    return back


_BLOCK = 1 << 22  # weights per float block of a large linear layer's mask


def _row_blocks(keep: torch.Tensor) -> list[tuple[int, int]]:
    return row_blocks(keep.shape[0], keep.shape[1], _BLOCK)


PATTERNS = 8  # distinct liveness patterns over positions a linear layer answers one by one, without a matmul


def patterns(live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the distinct rows of bool [positions, features] `live`, each position's row among them) where there
    are at most PATTERNS: a sequence whose class token or padding differs from its other tokens has two."""
    if live.shape[0] == 0:
        return None
    if rows_alike(live):
        return live[:1], torch.zeros(live.shape[0], dtype=torch.long)
    # Rows grouped by a random projection (a sort of one number per row, not of whole rows), then checked
    # exactly: a collision, however unlikely, falls back to sorting the rows themselves.
    keys = as_float(live, torch.float64) @ torch.rand(live.shape[1], dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(0))
    _, inverse = torch.unique(keys, return_inverse=True)
    count = int(inverse.max()) + 1
    if count > PATTERNS:
        return None
    first = torch.full((count,), live.shape[0], dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(live.shape[0]), "amin")
    distinct = live[first]
    if not torch.equal(distinct[inverse], live):
        distinct, inverse = torch.unique(live, dim=0, return_inverse=True)
    return (distinct, inverse) if distinct.shape[0] <= PATTERNS else None


def apply_keep(op, x, keep: torch.Tensor, lines=None) -> torch.Tensor:
    """`op(x, keep as 0/1 floats)`, up to positive scaling (only positivity carries meaning).

    A linear layer whose input has few liveness patterns over its positions (one,
    usually; two where a class token differs from the patches) needs no matmul:
    output o is live at a position iff a kept weight of row o reads a live input of
    that position's pattern. Otherwise it goes a block of output rows at a time, so
    its float mask never exists whole (a vocabulary-sized head would need
    gigabytes). `lines` (connectivity.KeptLines), where given, answers "which rows keep a
    weight" without reading the mask."""
    if op is not F.linear or len(keep.shape) != 2 or not isinstance(x, torch.Tensor):
        return op(x, as_float(keep_tensor(keep), x.dtype))
    found = patterns(greater(x.reshape(-1, x.shape[-1]), 0))
    if found is not None:
        distinct, inverse = found
        live = torch.stack([any_kept(keep, p, dim=1, lines=lines) for p in distinct])
        return as_float(live[inverse], x.dtype).reshape(*x.shape[:-1], keep.shape[0])
    mask = keep_tensor(keep)
    if mask.numel() <= _BLOCK:
        return op(x, as_float(mask, x.dtype))
    return torch.cat([F.linear(x, as_float(mask[a:b], x.dtype)) for a, b in _row_blocks(mask)], -1)


def any_kept(keep: torch.Tensor, along: torch.Tensor, dim: int, lines=None) -> torch.Tensor:
    """Bool per row (dim=1: some kept weight of the row lies in a column where `along` holds) or per
    column (dim=0: some kept weight of the column lies in a row where `along` holds), by row blocks;
    from `lines` alone where `along` holds everywhere."""
    everywhere = all_true(along)
    if everywhere and lines is not None:
        return (lines.rows if dim == 1 else lines.cols).clone()
    if isinstance(keep, SparseKeep):
        return keep.any_rows(along) if dim == 1 else keep.any_cols(along)
    keep = keep_tensor(keep)
    out = torch.zeros(keep.shape[0] if dim == 1 else keep.shape[1], dtype=torch.bool)
    for a, b in _row_blocks(keep):
        block = keep[a:b]
        if dim == 1:
            out[a:b] = any_along(block if everywhere else block & along, 1)
        elif everywhere or any_true(along[a:b]):
            out |= any_along(block if everywhere else block & along[a:b, None], 0)
    return out


EVERYWHERE = object()  # "every weight position reached": spares building an all-True [O, I] mask
ALL_KEPT = object()  # a layer's effective weights: every kept one


def linear_backward(x: torch.Tensor, keep: torch.Tensor, g: torch.Tensor,
                     lines=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient for x, reached [O, I]) of `F.linear(x, keep)` without autograd, a block of output
    rows at a time: reached[o, i] holds when some position has g[., o] > 0 and x[., i] > 0 (both
    non-negative). Where every position shares one liveness (or one usedness) pattern, that is an
    outer product of two bool vectors, which spares the [O, I] matmul."""
    xs, gs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    xl, gl = greater(xs, 0), greater(gs, 0)
    used_by = patterns(gl)
    if used_by is not None:  # few usedness patterns: no matmul (up to scale)
        distinct, inverse = used_by
        gx = as_float(torch.stack([any_kept(keep, p, dim=0, lines=lines) for p in distinct])[inverse], x.dtype)
    else:
        gx = torch.zeros(xs.shape, dtype=x.dtype)
        mask = keep_tensor(keep)
        for a, b in _row_blocks(mask):
            gx += torch.matmul(gs[:, a:b], as_float(mask[a:b], x.dtype))
    live_by = patterns(xl)
    if (live_by is not None and len(live_by[0]) == 1) or (used_by is not None and len(used_by[0]) == 1):
        used, live = any_along(gl, 0), any_along(xl, 0)  # one pattern on a side: reached = used x live
        if all_true(used) and all_true(live):
            return gx.view(x.shape), EVERYWHERE
        reached = Outer(used, live)
    elif live_by is not None and used_by is not None:  # few of each: the pairs some position holds
        n = len(live_by[0])
        reached = torch.zeros(keep.shape, dtype=torch.bool)
        for pair in torch.unique(used_by[1] * n + live_by[1]).tolist():
            reached |= outer(used_by[0][pair // n], live_by[0][pair % n])
    else:
        reached = torch.cat([torch.matmul(gs[:, a:b].t(), xs) > 0 for a, b in _row_blocks(keep)], 0)
    return gx.view(x.shape), reached


class ChannelConv:
    """Conv at channel level: output channel o is live iff a connected input channel is.

    The result is *reduced*: size 1 in every spatial dim. Rules that only
    broadcast (registered with reduced_ok=True) take reduced values as they are; every other
    rule sees them expanded to the node's recorded shape first. Its backward is written out
    (`backward`): a nested autograd pass per conv cost more than the rest of the flow.
    """

    def __init__(self, groups: int, out_shape):
        self.groups, self.out_ndim = groups, len(out_shape)

    def __call__(self, x, conn):
        per_channel = x.sum(dim=tuple(range(2, x.ndim)))  # [1, I]; sum, not max, so gradients reach all
        o, ig = conn.shape
        out = torch.bmm(conn.view(self.groups, o // self.groups, ig), per_channel.view(self.groups, ig, 1))
        # Spatially uniform by construction: keep the [1, O, 1, ...] view; it broadcasts.
        return out.view(1, o, *([1] * (self.out_ndim - 2)))

    def backward(self, x: torch.Tensor, conn: torch.Tensor, g: torch.Tensor):
        """(gradient for x, reached [O, I/groups]) of __call__: what autograd gives, without its graph."""
        o, ig = conn.shape
        per_channel = x.sum(dim=tuple(range(2, x.ndim))).view(self.groups, 1, ig)
        gv = g.reshape(self.groups, 1, o // self.groups)
        gin = torch.bmm(gv, conn.view(self.groups, o // self.groups, ig).to(g.dtype))  # [groups, 1, ig]
        # (conn: bool or its 0/1 floats; `to` is free when it already has g's dtype)
        gx = gin.view(1, self.groups * ig, *([1] * (x.ndim - 2))).expand(x.shape)
        used, live = gv.transpose(1, 2) > 0, per_channel > 0
        if all_true(used) and all_true(live):
            return gx, EVERYWHERE  # every pair reached: spares the [O, I] outer product
        return gx, (used & live).view(o, ig)


def all_ones_view(mask: torch.Tensor) -> bool:
    """A weight that is not pruned reads as a broadcast view of one 1 (ChannelFlow.attr_keep_leaf)."""
    return all(s == 0 for s in mask.stride()) and mask.numel() > 0 and float(mask.reshape(-1)[0]) == 1.0


def dense_linear(x: torch.Tensor, out_features: int) -> torch.Tensor:
    """F.linear with every weight kept, up to positive scaling: each output live iff some input of its
    row is (a tied vocabulary head costs a sum, not a [tokens, vocab] matmul)."""
    return x.sum(-1, keepdim=True).expand(*x.shape[:-1], out_features)



class EffectiveWeights:
    """What the backward pass found of each prunable weight: its kept weights on an input-to-output path.

    The layers' backward passes `record` the positions they reached (per weight at
    element level, per channel pair at channel level); `count` turns those records
    into effective counts (Vysogorets & Kempe). A weight applied once keeps only its
    count; one applied more often keeps its positions packed one bit per weight
    until all its uses are in. `reached` (cover.py), where given, is told per weight
    whether some use reached every weight position.
    """

    def __init__(self, reached: dict[str, bool] | None = None):
        self.reached = reached
        self.hits: dict[str, object] = {}  # name -> ALL_KEPT, a final count, or packed bits of hit positions
        self.pairs: dict[str, object] = {}  # channel level: name -> bool [O, I/groups] reached, or EVERYWHERE
        self.applied: dict[str, int] = {}  # name -> times a layer applied it in the forward pass
        self.interpreted: set[str] = set()  # weights some rule applied (others hide in opaque modules)
        self.transformed: set[str] = set()  # weights transformed before use: paths unknown, all kept effective
        self.leaves: list[tuple[str, torch.Tensor]] = []  # float masks of weights read through get_attr

    def add_leaf(self, name: str, mask: torch.Tensor) -> None:
        """A float mask whose gradient, after the backward pass, says which positions of `name` were reached."""
        self.leaves.append((name, mask))

    def record(self, name, keep, reached):
        self._note_reached(name, reached)
        if reached is EVERYWHERE or self.hits.get(name) is ALL_KEPT:
            self.hits[name] = ALL_KEPT  # every kept weight: counted from the allocation, no mask read
            return
        if self.applied.get(name) == 1 and all(n != name for n, _ in self.leaves):
            # applied once (the forward is complete): its count is final, no bits need keeping for an OR
            self.hits[name] = kept_on(reached, keep)
            return
        # kept on a path; packed, as every layer's waits for the count
        hit = pack_bits(dense_reached(reached) & keep_tensor(keep))
        self.hits[name] = hit if name not in self.hits else self.hits[name] | hit

    def _note_reached(self, name, reached):
        # Only when asked (cover.py): whether a use of the layer reached every weight position.
        if self.reached is not None:
            self.reached[name] = self.reached.get(name, False) or reached is EVERYWHERE or (
                reached.all() if isinstance(reached, Outer) else all_true(reached))

    def record_pairs(self, name, conn, reached):
        self._note_reached(name, reached)
        before = self.pairs.get(name)
        if reached is EVERYWHERE or before is EVERYWHERE:
            self.pairs[name] = EVERYWHERE  # every kept pair (LevelMasks.effective_count)
            return
        hit = reached & conn
        self.pairs[name] = hit if before is None else before | hit

    def record_leaves(self, masks) -> None:
        """After the backward pass: the positions the get_attr leaves' gradients reached."""
        for name, mask in self.leaves:
            if mask.grad is not None:
                self.record(name, masks.keep(name), mask.grad > 0)

    def count(self, masks, name: str, collapsed: bool) -> int:
        """Kept weights of `name` on an input-to-output path under `masks` (a flow.MaskSource)."""
        if collapsed:
            return 0  # no input-output path at all
        if name not in self.interpreted or name in self.transformed:
            # Applied inside a module with no rule, transformed before use, or never applied:
            # its paths are unknown, so every kept weight counts as effective (never overstate sparsity).
            return int(torch.count_nonzero(masks.keep(name)))
        hits = self.hits.get(name)
        if hits is ALL_KEPT:
            return masks.kept_count(name)
        count = hits if isinstance(hits, int) else (count_bits(hits) if hits is not None else 0)
        if name in self.pairs:
            count += masks.effective_count(name, self.pairs[name])
        return count
