"""Training and evaluation: checkpoints, run configs, distributed set-up, the loop, evaluation.

Heavy parts (the trainer, evaluation) are imported from their modules:
``mmi.engine.trainer.train``, ``mmi.engine.evaluate.evaluate``. The checkpoint helpers named
below are re-exported lazily, so that ``python -m mmi.engine.checkpoint`` runs the module once
(an eager import here would load it before runpy executes it as ``__main__``).
"""
import importlib

__all__ = ["CheckpointError", "export_inference", "load_inference", "save_inference"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".checkpoint", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
