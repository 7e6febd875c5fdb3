"""The Analysis: what is built once per model (trace, prunable weights, magnitude index, layer graph,
connectivity), and every question asked of it (report, masks, collapse sparsity, MACs).

Later stages (suggest_mt, prune copies in validate and mt-search, compact, the CLI)
take an Analysis instead of re-tracing and re-sorting. The analysis never changes
the model (docs/design.md Invariant 7): per-node results live on its own graph.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from collapsekit.analysis.collector import old_objects_frozen
from collapsekit.analysis.connectivity import Connectivity, LevelMasks
from collapsekit.analysis.cost import count_macs, forward_macs
from collapsekit.analysis.cover import Cover
from collapsekit.analysis.emptied import EmptiedCovers, SparsestOfSet
from collapsekit.analysis.flow import FlowResult, collapses, run_flow
from collapsekit.analysis.forked import Beside, can_fork, map_forked
from collapsekit.analysis.graph import build_graph, effective_depth, import_beside
from collapsekit.analysis.heap import STREAMED_STRETCH, release_after, release_freed, trimmed_every
from collapsekit.analysis.intervals import DEFAULT_RANGE, data_range, interval_cuts, merge_cuts
from collapsekit.analysis.lazy import initialized_copy
from collapsekit.analysis.level_flows import level_flows
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.analysis.nonfinite import NonFinite
from collapsekit.analysis.prunable import find_prunable, tensors
from collapsekit.analysis.report import CollapseReport, LayerReport, LevelReport
from collapsekit.analysis.rules import UNHANDLED
from collapsekit.analysis.streamed import StreamedTensors, skeleton
from collapsekit.analysis.threads import analysis_threads, phase_threads, quick_gil_handoff
from collapsekit.analysis.timing import Timings
from collapsekit.analysis.timing import progress as _progress
from collapsekit.analysis.trace import trace
from collapsekit.analysis.values import has_cuttable_activation, relu_cuts
from collapsekit.errors import CollapsekitError
from collapsekit.files.stream import Checkpoint
from collapsekit.spec import fraction

# Above this many multiply-accumulates per forward pass, the per-level flow runs at
# channel level (exact collapse sparsity still comes from the element level).
ELEMENT_LEVEL_MACS = 3e8

# 21 levels from 0.5 to 0.999, denser where collapse usually happens.
# Forked flows (forked.py) pay a fork and the parent's copy-on-write faults while the child lives (about
# 0.1 s on WRN-28-8): only flows expected to take this long in all are shared out.
FORK_WORTH_SECONDS = 0.6
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985,
                      0.99, 0.992, 0.994, 0.995, 0.996, 0.997, 0.998, 0.999)



def _in_analysis_scope(fn):
    """Decorator: `fn` runs with the analysis's intra-op threads (threads.py) and the process's older objects
    out of the garbage collector's view (collector.py); a method of an analysis streaming its weights from a
    checkpoint hands freed heap back more often (heap.STREAMED_STRETCH). All restored afterwards."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        streamed = bool(args) and isinstance(args[0], Analysis) and getattr(args[0], "checkpoint", None) is not None
        with analysis_threads(), old_objects_frozen(), (
                trimmed_every(STREAMED_STRETCH) if streamed else contextlib.nullcontext()):
            return fn(*args, **kwargs)
    return wrapper

class Analysis:
    """One model's analysis, built once: ask it for reports, masks and boundaries at any sparsity and MT.

    `mt` is the Minimum Threshold (an int count per layer, or a percent of all
    prunable weights: a float or "0.05%"); `with_mt` gives the same analysis
    under another MT without a new trace or sort. `exact`: True runs every
    level's flow per element (exact dead channels), False per channel (sound,
    fast), "auto" per element for models under ELEMENT_LEVEL_MACS. The collapse
    sparsity is exact either way. Building it and `report()` run with as many
    intra-op threads as there are idle CPUs (threads.py), and leave the caller's
    torch.get_num_threads() as it was.
    """

    @_in_analysis_scope
    def __init__(self, model: nn.Module, example_inputs, include=None, exclude=None, mt=None, exact="auto",
                 name: str | None = None, checkpoint=None, progress: bool = False):
        if exact not in (True, False, "auto"):
            raise CollapsekitError(f"exact must be True, False or 'auto', got {exact!r}")
        self.name = name or type(model).__name__
        model = initialized_copy(model, example_inputs)  # lazy modules: weights from a copy's first forward
        self.timings = Timings()  # seconds per stage, shared by with_mt copies
        self.checkpoint = checkpoint
        self.zero_filled: list[str] = []  # streamed: meta buffers the checkpoint lacks, traced as zeros
        self.model = model  # read (copied) by the data-aware forecast (validation/), never changed
        self.input_range = DEFAULT_RANGE  # what the value level assumes of inputs; with data, the data's min/max
        self._forecasters: dict[int, object] = {}  # validation/trainable.py's Forecasters, by data set
        self.weights = find_prunable(model, include, exclude)
        traced_model = model
        with self.timings.stage("open checkpoint"):
            if checkpoint is not None:
                # Invariant 9: every weight is read from the file when a question needs it.
                source = Checkpoint(checkpoint)
                self.tensors = StreamedTensors(source, self.weights, self.timings)
                traced_model, self.zero_filled = skeleton(model, source, self.weights)
            else:
                self.tensors = tensors(model, self.weights)
                if any(t.is_meta for t in self.tensors):
                    raise CollapsekitError(f"{self.name}'s weights are on the meta device: pass checkpoint= "
                                           "(a .safetensors file or a sharded directory) to read them from")
        self._line_maxima: dict[int, tuple] = {}  # weight -> magnitudes.line_maxima, read beside the trace
        self.traced, self.index = self._trace_beside_index(traced_model, example_inputs, mt, progress,
                                                           meanwhile=self._structure)
        self.connectivity.index = self.index
        release_freed()  # the passes over every weight leave their per-layer temporaries on the heap
        self.mt = resolve_mt(mt, self.index.total)
        self.channel_level = (forward_macs(self.traced) > ELEMENT_LEVEL_MACS) if exact == "auto" else not exact
        self._covers: dict[bool, Cover] = {}  # by channel_level
        self._emptied: dict[bool, EmptiedCovers] = {}  # by channel_level
        self._sets: dict[bool, SparsestOfSet] = {}  # by channel_level
        self._depths: dict[frozenset, int] = {}  # emptied layers -> effective depth
        self._full_taps_alive: dict[tuple, bool] = {}  # (k, MT) -> _alive_per_element_cheaply
        self._ahead: dict[bytes, FlowResult] = {}  # a level's pruned counts -> its flow, run before the report asks
        self._floors: dict[tuple, dict[str, list[int]]] = {}  # the sparsest masks' unused channels, by MT
        self._boundary_ahead: dict[int, float] = {}  # MT -> collapse_sparsity, found beside the level flows
        self._reach_ahead: dict[tuple, float] = {}  # (k, MT) -> _element_reach, found beside the level flows
        self._past_cover: dict[int, int] = {}  # MT -> a count whose flow is not as connected as dense

    @classmethod
    def of(cls, model, example_inputs=None, include=None, exclude=None, mt=None, **kwargs) -> Analysis:
        """`model` itself when it already is an Analysis (under `mt` when given), else a new one."""
        if isinstance(model, Analysis):
            if include is not None or exclude is not None:
                raise CollapsekitError("include/exclude are fixed when the Analysis is built; build a new one")
            return model if mt is None else model.with_mt(mt)
        if example_inputs is None:
            raise CollapsekitError("example_inputs are needed to analyse a model (a tensor, tuple or dict)")
        return cls(model, example_inputs, include, exclude, mt, **kwargs)

    # -- the weights --------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of prunable weights (N of Global MP)."""
        return self.index.total

    @functools.cached_property
    def bottlenecks(self) -> frozenset[str]:
        """Names of the prunable weights no input-output path avoids (emptying one cuts every path)."""
        return frozenset(w.name for w in self.weights if not self.graph.bypassable[w.name])

    def with_mt(self, mt) -> Analysis:
        """The same analysis under another Minimum Threshold (no new trace or sort)."""
        other = copy.copy(self)
        other.mt = resolve_mt(mt, self.index.total)
        return other

    def count(self, sparsity: float) -> int:
        """Weights Global MP prunes at `sparsity`: round(s * N), checked against what MT leaves prunable."""
        k = sparsity_to_count(sparsity, self.index.total)
        room = self.index.max_count(self.mt)
        if k > room:
            raise CollapsekitError(f"sparsity {sparsity} needs {k} pruned weights but MT={self.mt} per layer "
                                   f"leaves only {room} prunable")
        return k

    # -- masks ----------------------------------------------------------------------------
    def level(self, k: int) -> LevelMasks:
        """The Global MP (+MT) masks that prune `k` weights, served lazily."""
        return self.connectivity.level(self.index.allocate(k, self.mt))

    def keep_masks(self, k: int) -> tuple[list[torch.Tensor], object, float]:
        """Full keep-masks (in `weights` order), per-layer pruned counts and the threshold for `k` pruned."""
        level = self.level(k)
        return level.keep_list(), level.alloc.pruned, level.alloc.threshold

    def masks(self, sparsity: float | None = None, k: int | None = None) -> dict[str, torch.Tensor]:
        """{weight name: bool keep-mask} of Global MP (+MT) at `sparsity` (or `k` pruned): exactly ck.prune's."""
        if (sparsity is None) == (k is None):
            raise CollapsekitError("give exactly one of sparsity or k")
        keep, _, _ = self.keep_masks(self.count(sparsity) if k is None else k)
        return {w.name: m for w, m in zip(self.weights, keep)}

    # -- questions ------------------------------------------------------------------------
    def flow(self, k: int, backward: bool = True, channel_level: bool | None = None, cuts=None,
             record: bool = True) -> FlowResult:
        """The structural flow of the masks that prune `k` weights; `record`: each node's reached elements stay
        on the analysis's graph (flow.FLOW_META)."""
        channel = self.channel_level if channel_level is None else channel_level
        return run_flow(self.traced, self.weights, self.level(k), backward=backward, channel_level=channel,
                        cuts=cuts, record=record)

    def collapsed_at(self, k: int, channel_level: bool | None = None, quick: bool = True) -> bool:
        """True if the masks pruning `k` weights leave no kept input-to-output path.

        Sound shortcuts first (the flow is monotone in the masks): masks that
        contain the cover (cover.py) are as connected as dense; an element-level
        question on a model analysed per channel is first put to a channel-level
        flow whose convs keep only taps that read real input at every position and
        whose channels count only where live everywhere (`LevelMasks.full_taps_only`),
        which under-approximates the element level at channel-level cost; and if the
        network stays connected with every bypassable layer emptied, it stays
        connected with their real masks, which are then never computed (`quick`;
        skipped where those layers are empty already, as the emptied masks would then
        be the real ones).
        """
        channel = self.channel_level if channel_level is None else channel_level
        level = self.level(k)
        if channel == self.channel_level:
            # No cover contains masks at or past a count whose flow is not the dense verdict (flows are monotone)
            if k < self._past_cover.get(self.mt, k + 1) and self.cover().contains(level.alloc.pruned):
                return False
            built = self._emptied.get(self.channel_level)  # known verdicts only: none before the covers are built
            known = built.verdict(level.alloc.pruned, build=False) if built is not None else None
            if known is None:
                known = self.level_sets().verdict(level.alloc.pruned)
            if known is not None:
                return known.collapsed
        if not channel and self._alive_per_element_cheaply(k):
            return False  # alive per element, proven by the channel-level under-approximation (full taps only)
        bypassable = {w.name for w, n in zip(self.weights, level.alloc.pruned)
                      if self.graph.bypassable[w.name] and n < w.numel}
        if quick and bypassable and len(bypassable) < len(self.weights):
            if not collapses(self.traced, self.weights, level.emptying(bypassable), channel_level=channel):
                return False
        found = collapses(self.traced, self.weights, level, channel_level=channel)
        release_after(self.index.total)
        return found

    def line_maxima(self, i: int) -> tuple:
        """magnitudes.line_maxima of weight `i` in its [O, -1] view: the one read beside the trace where there
        was time for it (handed out once), else read now."""
        found = self._line_maxima.pop(i, None)
        return found if found is not None else self.index.line_maxima(i, self.tensors[i], self.weights[i].shape[0])

    def _alive_per_element_cheaply(self, k: int) -> bool:
        """True where a channel-level flow whose convs keep only the taps that read real input at every position
        (`LevelMasks.full_taps_only`, an under-approximation of the element level at channel-level cost) keeps
        the masks pruning `k` weights connected; False where that proves nothing (or there is no such flow)."""
        if not (self.channel_level and self.connectivity.kmax):
            return False
        key = (k, self.mt)  # asked twice by the boundary search at an emptied bottleneck: one flow
        if key not in self._full_taps_alive:
            self._full_taps_alive[key] = not collapses(self.traced, self.weights, self.level(k).full_taps_only(),
                                                       channel_level=True)
        return self._full_taps_alive[key]

    def _structure(self, traced) -> None:
        """The layer graph and the convs' tap maxima (connectivity.py) of `traced`: what needs the trace but not
        the magnitude index, built while the index is still being read (its `index` is set once it is in)."""
        with self.timings.stage("graph"):
            self.graph = build_graph(traced, self.weights)
        with self.timings.stage("connectivity"):
            self.connectivity = Connectivity(traced, self.weights, self.tensors)

    def _trace_beside_index(self, model: nn.Module, example_inputs, mt, progress: bool, meanwhile):
        """(trace, magnitude index), the index built while the trace runs (trace.trace's `beside`), and
        `meanwhile(trace)` run once the trace is done, while the index may still be read.

        A torch.export trace (the transformers': a second or more) is Python that holds the GIL almost
        throughout, so on two idle cores the index is built in a forked child beside it and sent back
        (forked.Beside): as a second thread, each of its numpy calls waited to win the GIL back (ViT-base's
        index took 1.4 s beside export against 0.3 s alone). Beside fx's trace (its shapes recorded by a
        forward whose kernels release the GIL, a fraction of a second) a thread builds it, winning the GIL
        back within a short switch interval (threads.quick_gil_handoff): a fork there costs as much as it
        saves (WRN-28-8: within noise, the trace slower by its copy-on-write faults). A thread also serves
        where there is no fork, one idle core, a progress bar to draw, or a streamed checkpoint.

        While the trace still runs, the index goes on to read the bins of the report's default levels (its
        next question), and then the linear weights' line maxima (the cover's) with the top weights those
        levels' sparse layers will ask for, unless the weights stream from a checkpoint: there the trace's
        and those reads' peaks would add up (a streamed 1 B report's peak rose from 0.37x to 0.46x of its
        file), and memory is what streaming is for."""
        def build_index(threads: int, busy, timings: Timings, maxima: dict) -> MagnitudeIndex:
            torch.set_num_threads(threads)  # OpenMP's count is per thread: this one starts at the default
            with timings.stage("index"):
                index = MagnitudeIndex(self.weights, self.tensors, progress=progress)
            if busy() and self.checkpoint is None:
                mt_count = resolve_mt(mt, index.total)
                room = index.max_count(mt_count)
                counts = [min(room, sparsity_to_count(s, index.total)) for s in sparsity_levels()]
                with timings.stage("index reads"):
                    index.prefetch(counts, mt_count)
                with timings.stage("line maxima"):  # the cover's reads (cover.py), while there is time
                    index.expect_kept([index.allocate(k, mt_count) for k in counts])
                    for i, w in enumerate(self.weights):
                        if not busy():
                            break
                        if len(w.shape) == 2:
                            maxima[i] = index.line_maxima(i, self.tensors[i], w.shape[0])
            return index

        def in_child(busy):
            timings, maxima = Timings(), {}
            return build_index(max(1, threads - 1), busy, timings, maxima), maxima, timings

        jobs = []  # the index's one builder: a forked child (Beside) or the thread's future

        @contextlib.contextmanager
        def beside(method: str):
            if method == "export" and threads >= 2 and self.checkpoint is None and not progress and can_fork():
                jobs.append(child := Beside(in_child))
                try:
                    yield
                except BaseException:
                    child.cancel()
                    raise
                child.done()
                return
            tracing = threading.Event()
            tracing.set()
            with quick_gil_handoff():
                jobs.append(pool.submit(build_index, threads, tracing.is_set, self.timings, self._line_maxima))
                try:
                    yield
                finally:
                    tracing.clear()

        import_beside()  # the graph's library (graph.py)
        with ThreadPoolExecutor(1, thread_name_prefix="collapsekit-index") as pool, phase_threads() as threads:
            with self.timings.stage("trace"):
                traced = trace(model, example_inputs, beside=beside)
            job = jobs[0]
            if isinstance(job, Future):  # the thread's
                meanwhile(traced)
                return traced, job.result()
            try:
                meanwhile(traced)
            except BaseException:
                job.cancel()
                raise
            index, maxima, timings = job.result(
                lambda: (build_index(threads, lambda: False, Timings(), {}), {}, Timings()))
        index.attach(self.tensors)
        self._line_maxima.update(maxima)
        self.timings.add(timings)
        return traced, index

    def cover(self, channel_level: bool | None = None) -> Cover:
        """The cover masks (cover.py) of this model at the flow's granularity, built on first use."""
        channel = self.channel_level if channel_level is None else channel_level
        if channel not in self._covers:
            with self.timings.stage("cover"), phase_threads():
                self._covers[channel] = Cover(self, channel)
            release_freed()
        return self._covers[channel]

    def emptied_covers(self) -> EmptiedCovers:
        """The emptied-layer covers (emptied.py) at the flow's granularity."""
        if self.channel_level not in self._emptied:
            self._emptied[self.channel_level] = EmptiedCovers(self, self.cover())
        return self._emptied[self.channel_level]

    def level_sets(self) -> SparsestOfSet:
        """Verdicts from the sparsest level of each emptied set (emptied.py) at the flow's granularity."""
        if self.channel_level not in self._sets:
            self._sets[self.channel_level] = SparsestOfSet(self)
        return self._sets[self.channel_level]

    def value_collapsed_at(self, masks: LevelMasks, input_range=None) -> bool:
        """True if the masked network is provably constant at its current weights, for inputs in `input_range`
        (default `self.input_range`): sign analysis and interval domain, either's cuts count."""
        if not has_cuttable_activation(self.traced):
            return False  # nothing either domain could cut: skip building every mask
        keep = masks.keep_list()
        rng = self.input_range if input_range is None else input_range
        streamed = self.tensors if self.checkpoint is not None else None  # the skeleton's weights hold no data
        cuts = merge_cuts(relu_cuts(self.traced, self.weights, keep, tensors=streamed),
                          interval_cuts(self.traced, self.weights, keep, rng, tensors=streamed))
        return bool(cuts) and run_flow(self.traced, self.weights, keep, backward=False, cuts=cuts).collapsed

    def with_data(self, bundle) -> Analysis:
        """The same analysis whose value level assumes inputs within `bundle`'s min and max (no new trace)."""
        other = copy.copy(self)
        other.input_range = data_range(bundle)
        return other

    def collapse_sparsity(self, known: list[tuple[int, bool]] = ()) -> float:
        """The smallest global sparsity (to the weight) whose Global MP masks collapse the network; 1.0 if none.

        Masks are nested in k, so collapse is monotone and bisection over k is exact;
        `known` (k, collapsed) pairs and the first bottleneck's critical count bracket
        it. At channel level the bisection finds an upper bound (channel level keeps
        at least as much alive), which one element-level flow confirms or, rarely, a
        second bisection at element level lowers.
        """
        lo, hi = -1, self.index.max_count(self.mt)  # lo: known alive; hi: candidate collapsed
        for k, collapsed in known:
            if collapsed:
                hi = min(hi, k)
            else:
                lo = max(lo, k)
        critical = self.index.critical_counts(self.mt)
        emptying = hi  # the first count that empties a bottleneck (layer every path crosses), if below max
        for w, c in zip(self.weights, critical):
            if w.name in self.bottlenecks and c >= 0:
                emptying = min(emptying, int(c))
        hi, bottleneck = min(hi, emptying), emptying < hi
        # An emptied bottleneck is expected to collapse: the quick proof of life would only be run in vain.
        if not any(c for k, c in known if k == hi) and not self.collapsed_at(hi, quick=not bottleneck):
            return 1.0
        # Where an emptied bottleneck collapses it, the boundary is most often that very count: one flow one
        # weight below settles it (alive: every count below is too, as collapse is monotone), and none of the
        # bisection's flows is needed (ViT-base: 2 flows instead of 6).
        if bottleneck and hi - 1 > lo:
            # Exact proofs of life first, as the channel level's final check below would ask them anyway: the
            # full-taps flow, or where no conv is read per channel, the element flow (it costs a channel one).
            if self._alive_per_element_cheaply(hi - 1) or (
                    self.channel_level and not self.connectivity.kmax
                    and not self.collapsed_at(hi - 1, channel_level=False, quick=False)):
                return hi / self.index.total
            if self.collapsed_at(hi - 1):
                hi -= 1
            else:
                lo = hi - 1
        candidates = sorted({int(c) for c in critical if lo < c < hi})
        self.index.prefetch([lo + 1, hi, *candidates], self.mt)  # one read for the likely steps
        hi = self._bisect(lo, hi, self.channel_level, candidates)
        # One weight below the boundary the emptied masks seldom stay connected: the real ones go first.
        if self.channel_level and hi > 0 and self.collapsed_at(hi - 1, channel_level=False, quick=False):
            hi = self._bisect(-1, hi - 1, channel_level=False, candidates=[int(c) for c in critical if 0 <= c < hi])
        return hi / self.index.total

    def _bisect(self, lo: int, hi: int, channel_level: bool, candidates=()) -> int:
        """Smallest k in (lo, hi] that collapses, given that hi does.

        Collapse usually comes with the pruning of a layer's last weight, so the
        critical counts inside the bracket are bisected first; one flow at k - 1
        then proves the boundary exact, or the plain bisection goes on below it.
        """
        cands = sorted(c for c in set(candidates) if lo < c < hi)
        a, b = -1, len(cands)  # cands[a] known alive, cands[b] collapses (b == len: hi)
        while b - a > 1:
            mid = (a + b) // 2
            if self.collapsed_at(cands[mid], channel_level):
                b = mid
            else:
                a = mid
        lo, hi = (cands[a] if a >= 0 else lo), (cands[b] if b < len(cands) else hi)
        # hi is often itself a critical count (the first bottleneck's): prove it with one flow.
        if hi - lo > 1 and not self.collapsed_at(hi - 1, channel_level):
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.collapsed_at(mid, channel_level):
                hi = mid
            else:
                lo = mid
        return hi

    def conservative_ops(self) -> dict[str, int]:
        """{op: nodes} the flow interpreted conservatively (no exact rule): where precision is lost.

        Which rule reads a node depends on the graph, not on the masks, so the cover's flow (already
        run by a report) answers; a flow on the dense masks otherwise."""
        cover = self._covers.get(self.channel_level)
        if cover is not None:
            return dict(cover.conservative_ops)
        return self.flow(0, backward=False, record=False).conservative_ops

    def macs(self, masks: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, int]]:
        """Per weight applied as a matrix product: dense MACs and MACs counting only the kept weights of `masks`."""
        return count_macs(self.traced, masks)

    def layers(self) -> tuple[LayerReport, ...]:
        """Per prunable weight: size, topology, critical sparsity and MT protection under this MT."""
        with self.timings.stage("critical sparsities"):
            crit = self.index.critical_sparsities(self.mt)
        protected = self.index.protected(self.mt)
        return tuple(LayerReport(w.name, w.module, w.kind, w.shape, w.numel, self.graph.bypassable[w.name],
                                 float(c), self.graph.rejoins_at[w.name], int(p))
                     for w, c, p in zip(self.weights, crit, protected))

    def level_report(self, sparsity: float) -> LevelReport:
        """What Global MP (+MT) at `sparsity` does, as the masks alone decide (plus the value-level verdict)."""
        return self._level_report(sparsity)[0]

    def _known_unused(self, denser, pruned) -> dict[str, list[int]] | None:
        """The unused channels of masks pruning `pruned` per layer, known without a backward pass: a denser
        level (its flow and pruned counts) that nests in them, collapsed, and whose unused channels are
        already those of the sparsest masks. Usedness only shrinks as masks shrink, so every level in
        between has the same ones; collapse only spreads, so these masks collapse too."""
        if denser is None or not denser[0].collapsed or not bool(np.all(denser[1] <= pruned)):
            return None
        key = ("sparsest", self.mt)
        if key not in self._floors:  # one flow, only once some collapsed level has sparser ones after it
            self._floors[key] = run_flow(self.traced, self.weights, self.level(self.index.max_count(self.mt)),
                                         channel_level=self.channel_level).unused_channels
        floor = self._floors[key]
        return floor if denser[0].unused_channels == floor else None

    def _level_report(self, sparsity: float, denser=None) -> tuple[LevelReport, tuple]:
        """level_report, and (its flow, pruned counts) to pass as `denser` to a sparser level (`_known_unused`)."""
        k = self.count(sparsity)
        masks = self.level(k)
        pruned = masks.alloc.pruned
        if (flow := self._ahead.pop(pruned.tobytes(), None)) is None and (  # run ahead: report, _own_flows
                flow := self._shared_verdict(pruned)) is None:
            with self.timings.stage("flow per level"):
                flow = run_flow(self.traced, self.weights, masks, channel_level=self.channel_level,
                                unused=self._known_unused(denser, pruned))
        emptied = tuple(w.name for w, n in zip(self.weights, pruned) if n == w.numel)
        with self.timings.stage("value level"):
            value_collapsed = flow.collapsed or (not self.channel_level and self.value_collapsed_at(masks))
        with self.timings.stage("non-finite"):
            non_finite = self.non_finite_at(masks)
        return LevelReport(
            sparsity=float(sparsity), pruned=k, threshold=masks.alloc.threshold, collapsed=flow.collapsed,
            emptied_layers=emptied, emptied_bottlenecks=tuple(n for n in emptied if n in self.bottlenecks),
            dead_channels=flow.dead_channels, unused_channels=flow.unused_channels,
            effective_sparsity=1.0 - float(flow.effective.sum()) / self.index.total,
            # No path is left to be deep when none reaches the output, whatever the emptied layers leave.
            effective_depth=0 if flow.collapsed else self._depth(frozenset(emptied)),
            layer_sparsity={w.name: float(n) / w.numel for w, n in zip(self.weights, pruned)},
            value_collapsed=value_collapsed,
            outputs_reached=0.0 if flow.collapsed else flow.output_alive,
            non_finite=bool(non_finite), non_finite_layers=non_finite), (flow, pruned)

    def _shared_verdict(self, pruned) -> FlowResult | None:
        """The flow of the masks pruning `pruned` per layer where one already run answers it, else None."""
        if self.cover().contains(pruned):  # as connected as dense: no flow to run (cover.py)
            return FlowResult(False, {}, {}, (self.index.sizes - pruned).astype(np.int64), 1.0)
        if (known := self.level_sets().verdict(pruned)) is not None:  # its set's sparsest level (emptied.py)
            return known
        return self._emptied_verdict(pruned)  # the verdict of its emptied set (emptied.py), or None

    def _all_level_flows(self, counts: list[int]) -> dict[bytes, FlowResult]:
        """The channel-level flows of the levels pruning `counts`, all from one pass where the graph is
        built from plain CNN ops (level_flows.py), by pruned counts' bytes; {} where it is not."""
        if not self.channel_level:
            return {}
        ks = sorted(set(counts))
        levels = [self.level(k) for k in ks]
        with self.timings.stage("level flows"):
            flows = level_flows(self.traced, self.weights, levels)
        if flows is None:
            return {}
        for k, lv, flow in zip(ks, levels, flows):
            if flow.collapsed or flow.dead_channels or flow.unused_channels or flow.output_alive < 1.0 or (
                    not np.array_equal(flow.effective, self.index.sizes - lv.alloc.pruned)):
                self._past_cover[self.mt] = min(k, self._past_cover.get(self.mt, k))
                break
        return {lv.alloc.pruned.tobytes(): flow for lv, flow in zip(levels, flows)}

    def _own_flows(self, counts: list[int]) -> dict[bytes, FlowResult]:
        """The flows of the levels (weights pruned) that no shared verdict answers, run side by side in forked
        processes, one per idle CPU (forked.py), by pruned counts' bytes; {} where they run one by one (one
        level, one idle CPU, no fork, flows too short to pay for one, or weights streamed from a checkpoint:
        a 1.1 B report's child added up to 0.48x the file to the report's own 0.48x).

        Where the verdicts known already bracket the boundary with no level left between the densest known
        collapsed and the sparsest known alive (the sparsest level alive, or alive and collapsed neighbours),
        the levels' flows can tell the boundary search nothing (collapse is monotone in k): it runs beside
        them, first in the queue (it is the dearest question: a few flows), and its answer waits in
        `_boundary_ahead`. Where that alive level's channel-level flow also reaches every output,
        `_exact_outputs` will ask its reach per element first: that goes last into the queue, and waits in
        `_reach_ahead`."""
        pruned = {k: self.level(k).alloc.pruned for k in counts}
        verdicts = {k: self._ahead.get(pruned[k].tobytes()) or self._shared_verdict(pruned[k]) for k in counts}
        todo = [k for k in counts if verdicts[k] is None]
        tasks = [("flow", k) for k in todo]
        alive = max((k for k in counts if verdicts[k] is not None and not verdicts[k].collapsed), default=None)
        dead = min((k for k in counts if verdicts[k] is not None and verdicts[k].collapsed), default=None)
        settled = alive is not None and not any(
            alive < k and (dead is None or k < dead) for k in todo)  # no flow can narrow the bracket
        if settled and self.mt not in self._boundary_ahead:
            tasks.insert(0, ("boundary", [(alive, False)] + ([(dead, True)] if dead is not None else [])))
        if settled and verdicts[alive].output_alive == 1.0 and self.channel_level:
            tasks.append(("reach", alive))
        expected = (len(todo) + 2 * any(kind == "boundary" for kind, _ in tasks)) * self._seconds_per_flow()
        if (len(tasks) < 2 or not can_fork() or self.checkpoint is not None or expected < FORK_WORTH_SECONDS):
            return {}  # a streamed analysis keeps to one process: a child's pages would add to the report's peak
        with phase_threads() as workers:
            if workers < 2:
                return {}
            with self.timings.stage("flow per level"):  # one call for all of them
                answers = map_forked(self._answer, tasks, workers)
        if tasks[0][0] == "boundary":
            self._boundary_ahead[self.mt] = answers.pop(0)
        if tasks[-1][0] == "reach":
            self._reach_ahead[(tasks[-1][1], self.mt)] = answers.pop()
        return {pruned[k].tobytes(): flow for k, flow in zip(todo, answers)}

    def _answer(self, task: tuple[str, object]):
        """One question of `_own_flows`: ("flow", k) -> the flow of the masks pruning k weights; ("boundary",
        known) -> collapse_sparsity(known); ("reach", k) -> _element_reach(k)."""
        kind, arg = task
        if kind == "boundary":
            return self.collapse_sparsity(arg)
        if kind == "reach":
            return self._element_reach(arg)
        return run_flow(self.traced, self.weights, self.level(arg), channel_level=self.channel_level)

    def _seconds_per_flow(self) -> float:
        """What one flow of this analysis has cost so far: a level's, else the cover's stage (its flow and the
        line maxima it read first, so more than a flow)."""
        for stage in ("flow per level", "cover"):
            if self.timings.calls.get(stage):
                return self.timings.seconds[stage] / self.timings.calls[stage]
        return 0.0

    def _depth(self, emptied: frozenset) -> int:
        """graph.effective_depth with these layers emptied, once per set (most levels share a few sets)."""
        if emptied not in self._depths:
            self._depths[emptied] = effective_depth(self.graph, set(emptied))
        return self._depths[emptied]

    def _emptied_verdict(self, pruned) -> FlowResult | None:
        with self.timings.stage("emptied covers"):
            return self.emptied_covers().verdict(pruned)

    def outputs_reached(self, k: int, channel_level: bool | None = None) -> float:
        """Fraction of output elements some kept input path reaches under the masks pruning `k` weights.

        0 exactly where `collapsed_at(k)`; 1 where every output element can still move. One forward flow:
        exact per element, an upper bound per channel (a channel live anywhere counts live everywhere).
        Reach only shrinks as masks do, so it is non-increasing in `k` (Global MP's masks are nested).
        """
        return self.flow(k, backward=False, channel_level=channel_level, record=False).output_alive

    def non_finite_at(self, masks: LevelMasks) -> tuple[str, ...]:
        """The prunable weights whose pruned norm the masked model divides by (it then computes NaN/inf)."""
        return self.non_finite.layers(masks)

    def non_finite_sparsity(self, known: list[tuple[int, bool]] = ()) -> float:
        """The smallest global sparsity (to the weight) whose masks make the model compute NaN/inf; 1.0 if none.

        A norm slice that Global MP empties stays empty as it prunes more (its masks are nested), so the
        verdict is monotone in k and bisection is exact; `known` (k, non-finite) pairs bracket it. Free for
        a model that divides by no norm of prunable weights.
        """
        if not self.non_finite.sources:
            return 1.0
        lo, hi = -1, self.index.max_count(self.mt)
        for k, broken in known:
            lo, hi = (lo, min(hi, k)) if broken else (max(lo, k), hi)
        if not any(broken for k, broken in known if k == hi) and not self.non_finite_at(self.level(hi)):
            return 1.0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.non_finite_at(self.level(mid)) else (mid, hi)
        return hi / self.index.total

    @functools.cached_property
    def non_finite(self) -> NonFinite:
        """Where this model divides by a norm of prunable weights (nonfinite.py), found once."""
        return NonFinite(self.traced, self.weights, self.tensors)

    def _exact_outputs(self, levels: list[LevelReport]) -> list[LevelReport]:
        """`levels` (from channel-level flows) with `outputs_reached` per element where the channel level sees
        every output reached: checked from the sparsest level down until one reaches all, since reach only
        shrinks with the masks, so every denser level reaches all too. A channel-level fraction under 1
        is kept (per element it is under 1 as well: channel level only keeps more alive)."""
        out = list(levels)
        for i in reversed(range(len(out))):
            lv = out[i]
            if lv.collapsed or lv.outputs_reached < 1.0:
                continue
            reached = self._reach_ahead.pop((lv.pruned, self.mt), None)  # asked beside the level flows
            if reached is None:
                reached = self._element_reach(lv.pruned)
            if reached == 1.0:
                break
            out[i] = replace(lv, outputs_reached=reached)
        return out

    def _element_reach(self, k: int) -> float:
        """Per element, the fraction of outputs that the masks pruning `k` weights reach: 1.0 at once where the
        channel-level flow keeping only full taps reaches them all (it under-approximates the element level)."""
        if self.connectivity.kmax and run_flow(self.traced, self.weights, self.level(k).full_taps_only(),
                                               backward=False, channel_level=True).output_alive == 1.0:
            return 1.0
        return self.outputs_reached(k, channel_level=False)

    @_in_analysis_scope
    def report(self, sparsities=None, progress: bool = False, name: str | None = None, data=None) -> CollapseReport:
        """The CollapseReport at `sparsities` (default: 21 levels, 0.5-0.999) under this analysis's MT.

        With `data` (a DataBundle) the value level assumes inputs within the data's
        min and max; the trainability forecast runs the model on data, so
        `collapsekit.validation.trainable.report` adds it (`ck.analyze(..., data=)`).
        """
        wanted = sparsity_levels(sparsities)
        an = self if data is None else self.with_data(data)
        counts = [self.count(s) for s in wanted]
        # every level's threshold bin in one read of the weights
        with self.timings.stage("index reads"), phase_threads():
            self.index.prefetch(counts, self.mt)
        if self.checkpoint is None:  # one read of each layer's top, shared by forked workers; streamed weights
            # keep theirs to the levels that ask, in turn: held from the first flow on, the densest level's read
            # met the report's other peaks (a 1.1 B report's peak rose from 0.46x to 0.51x of its file)
            self.index.expect_kept([self.level(k).alloc for k in counts])
        release_freed()
        every = self._all_level_flows(counts)  # one pass where the graph is plain
        self._ahead.update(every)
        if not every and not self.cover().contains(self.level(counts[-1]).alloc.pruned):
            self.emptied_covers().plan([self.level(k).alloc.pruned for k in counts])
            # the sparsest level of each emptied set first: its flow may answer the others
            self._ahead.update(self.level_sets().plan(counts, lambda pruned: self.cover().contains(pruned)
                                                      or self._emptied_verdict(pruned) is not None))
            self._ahead.update(self._own_flows(counts))
        levels, flow = [], None
        for s in _progress(wanted, "levels", progress):  # ascending: each level's masks nest in the last's
            level, flow = an._level_report(s, flow)
            levels.append(level)
            release_after(self.index.total)  # one level's masks are gone: their heap pages too
        with self.timings.stage("boundary search"):
            collapse = self._boundary_ahead.pop(self.mt, None)  # found beside the level flows (_own_flows)
            if collapse is None:
                collapse = self.collapse_sparsity([(lv.pruned, lv.collapsed) for lv in levels])
        if self.channel_level:  # the exact boundary decides what the coarser per-level flow may have missed
            levels = [lv if lv.collapsed or lv.sparsity < collapse
                      else replace(lv, collapsed=True, value_collapsed=True, effective_sparsity=1.0,
                                   effective_depth=0, outputs_reached=0.0)
                      for lv in levels]
            with self.timings.stage("outputs reached"):
                levels = self._exact_outputs(levels)
        conservative = self.conservative_ops()
        with self.timings.stage("non-finite"):
            non_finite = self.non_finite_sparsity([(lv.pruned, lv.non_finite) for lv in levels])
        return CollapseReport(
            model=name or self.name, total=self.index.total, mt=self.mt, collapse_sparsity=collapse,
            layers=self.layers(), levels=tuple(levels), trace_method=self.traced.method,
            input_shapes=self.traced.input_shapes, conservative_ops=conservative,
            unhandled_ops={**self.traced.gm.meta.get(UNHANDLED, {}), "flow": conservative},  # flow: over every level
            non_finite_sparsity=non_finite)


@_in_analysis_scope
def analyze(model, example_inputs=None, sparsities=None, mt=None, include=None, exclude=None,
            progress: bool = False, name: str | None = None, exact="auto", data=None,
            checkpoint=None) -> CollapseReport:
    """The CollapseReport of `model` (an nn.Module, or an Analysis already built) for Global MP at `sparsities`.

    `mt` is the Minimum Threshold: an int count per layer, or a percent of all
    prunable weights (float or "0.05%"). `example_inputs` (a tensor, a tuple, or a
    dict of keyword inputs) fixes the input shape. The model is never modified.
    With `data` (a `collapsekit.data.DataBundle`) the value level reads the data's range; `ck.analyze`
    (`collapsekit.validation.trainable.analyze`) also fills each level's `level.forecast`.
    `checkpoint` (a .safetensors file, or a sharded directory or its index file)
    streams the weights: `model` may live on the meta device, and each weight is
    read from the memory-mapped file when a question needs it (Invariant 9).
    """
    sparsity_levels(sparsities)  # a bad level is refused before any work
    extra = {} if isinstance(model, Analysis) else {"exact": exact, "checkpoint": checkpoint, "progress": progress}
    an = Analysis.of(model, example_inputs, include, exclude, mt, **extra)
    return an.report(sparsities, progress=progress, name=name, data=data)


def sparsity_levels(sparsities=None) -> list[float]:
    """The sorted distinct levels to analyse (DEFAULT_SPARSITIES when None); one-line error outside [0, 1)."""
    if sparsities is None:
        levels = DEFAULT_SPARSITIES
    elif isinstance(sparsities, (int, float, str)):
        levels = [fraction(sparsities)]
    else:
        levels = [fraction(s) for s in sparsities]  # 0.95 or "95%"
    levels = sorted(set(levels))
    for s in levels:
        sparsity_to_count(s, 1)  # raises a one-line error for a level outside [0, 1)
    return levels


__all__ = ["Analysis", "analyze", "sparsity_levels", "DEFAULT_SPARSITIES", "ELEMENT_LEVEL_MACS"]
