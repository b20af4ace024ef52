"""Training and evaluation: checkpoints, run configs, distributed set-up, the loop, evaluation.

Heavy parts (the trainer, evaluation) are imported from their modules:
``mmi.engine.trainer.train``, ``mmi.engine.evaluate.evaluate``.
"""
from .checkpoint import CheckpointError, export_inference, load_inference, save_inference

__all__ = ["CheckpointError", "export_inference", "load_inference", "save_inference"]
