"""Wall-clock seconds per stage of an analysis, so the next bottleneck is visible (`Analysis.timings`)."""
from __future__ import annotations

import contextlib
import time


class Timings:
    """Seconds and calls per named stage, in the order stages first ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        """Adds the wall time of the `with` body to stage `name` (nested stages count in both)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1

    def add(self, other: "Timings") -> None:
        """Adds `other`'s stages (timed in a forked child) to these."""
        for name, s in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s
            self.calls[name] = self.calls.get(name, 0) + other.calls[name]

    def to_dict(self) -> dict:
        return {name: {"seconds": s, "calls": self.calls[name]} for name, s in self.seconds.items()}

    def __str__(self) -> str:
        rows = [f"{name:<22} {s:8.2f} s  ({self.calls[name]} call{'s' * (self.calls[name] != 1)}, "
                f"{s / self.calls[name]:.3f} s each)" for name, s in self.seconds.items()]
        return "\n".join(rows)


def tqdm_class():
    """tqdm's bar class: the notebook widget where Jupyter can draw it, else the text bar.

    tqdm.auto picks the widget in any Jupyter kernel and, without ipywidgets,
    warns "IProgress not found" into every notebook; this asks for the widget
    only when ipywidgets is installed.
    """
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress(items, desc: str, enabled: bool = True, total: int | None = None):
    """`items` under a tqdm bar on a terminal (silent otherwise: `disable=None`); plain when not enabled."""
    if not enabled:
        return items
    return tqdm_class()(items, desc=desc, leave=False, disable=None, total=total)
