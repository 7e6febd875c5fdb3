"""collapsekit: predict, prevent and verify layer collapse under Global Magnitude Pruning."""
from collapsekit.errors import CollapsekitError
from collapsekit import models

__version__ = "0.1.0"

# Heavier entry points are imported lazily so `import collapsekit` stays cheap
# and a stage that fails to import never hides the others.
_LAZY = {
    "analyze": ("collapsekit.report", "analyze"),
    "CollapseReport": ("collapsekit.report", "CollapseReport"),
    "prune": ("collapsekit.prune", "prune"),
    "suggest_mt": ("collapsekit.prune", "suggest_mt"),
    "compact": ("collapsekit.compact", "compact"),
    "masks": ("collapsekit.masks", None),
    "data": ("collapsekit.data", None),
    "finetune": ("collapsekit.finetune", "finetune"),
    "validate": ("collapsekit.validate", "validate"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'collapsekit' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


__all__ = ["CollapsekitError", "models", "__version__", *_LAZY]
