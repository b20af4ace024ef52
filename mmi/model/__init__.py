"""The MMI network: attention (mutual, generic_lav, pixel_query), decoder with IMI, LFR, mask head, presets."""
from .mmi import MMI
from .presets import PRESETS, build_model, build_model_from_config, resolve_config

__all__ = ["MMI", "PRESETS", "build_model", "build_model_from_config", "resolve_config"]
