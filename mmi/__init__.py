"""MMI: multi-modal mutual attention and iterative interaction for referring image segmentation."""
__version__ = "0.1.0"
