"""collapsekit: predict, prevent and verify layer collapse under Global Magnitude Pruning."""
from collapsekit.errors import CollapsekitError
from collapsekit import models

from collapsekit.version import __version__  # noqa: E402

# The stages' entry points (each stage lives in its own subpackage, see docs/design.md's data flow) are
# imported on first use, so `import collapsekit` stays cheap (a report's process never imports the training
# or validation stages) and a stage that fails to import never hides the others.
_LAZY = {
    "prune": ("collapsekit.pruning.prune", "prune"),
    "suggest_mt": ("collapsekit.validation.trainable", "suggest_mt"),  # structural, or with data the forecast's
    "compact": ("collapsekit.pruning.compact", "compact"),
    "finetune": ("collapsekit.training.finetune", "finetune"),
    "validate": ("collapsekit.validation.validate", "validate"),
    "analyze": ("collapsekit.validation.trainable", "analyze"),  # with data= it adds the forecast
    "Analysis": ("collapsekit.analysis.analysis", "Analysis"),
    "CollapseReport": ("collapsekit.analysis.report", "CollapseReport"),
    "masks": ("collapsekit.pruning.masks", None),
    "load_sparse": ("collapsekit.files.sparse", "load_sparse"),
    "save_sparse": ("collapsekit.pruning.export", "save_sparse"),
    "search_mt": ("collapsekit.validation.mtsearch", "search_mt"),
    "data": ("collapsekit.data", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'collapsekit' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # importing the module just bound its name here; the function wins
    return value


__all__ = ["CollapsekitError", "models", "__version__", *_LAZY]
