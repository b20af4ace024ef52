"""Data: the refer-layout loader (RefCOCO family and synthetic sets), letterbox
transforms and the torch dataset."""
from .dataset import EpochItems, RefDataset, build_dataset, collate, default_t_max, load_refer
from .pickle_safe import UnsafePickleError, load_refs
from .refer import DatasetError, ImageError, Refer
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Letterbox, letterbox, letterbox_mask, normalization,
                         normalize_uint8, to_image, to_tensor)

__all__ = [
    "DatasetError", "EpochItems", "IMAGENET_MEAN", "IMAGENET_STD", "ImageError", "Letterbox", "RefDataset", "Refer",
    "UnsafePickleError", "build_dataset", "collate", "default_t_max", "letterbox", "letterbox_mask",
    "load_refer", "load_refs", "normalization", "normalize_uint8", "to_image", "to_tensor",
]
