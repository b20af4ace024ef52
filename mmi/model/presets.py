"""Presets: one builder per preset, each a dict of explicit settings.

``build_model(preset, vocab_size, **overrides)`` assembles the network; ``model.config``
records every setting so ``build_model_from_config`` rebuilds the same architecture.

Settings:
    backbone, backbone_weights ("default" | None | path), image_size (S), dim (C), heads,
    encoder_layers, decoder_layers, head_channels (mask decoder), t_max (T), word_dim,
    attention ("mutual" | "generic"), fusion ("product" | "order_free"), imi, lfr,
    lfr_weight, mask_weight, dropout, frozen_backbone (train the head only), dice_weight
    (an optional Dice term beside the paper's BCE; 0 by default), word_gate, sentence_fusion,
    language_norm (fusion.py, language.py), coord_features (the 8-D spatial map of MCN/VLT
    concatenated to the visual features, vision.py); all four off by default; aux_weight
    (deep supervision of each decoder layer on the stride-16 grid, mmi.py) and skip_fusion
    (the sentence feature gates the mask head's stride-8 level, mask_head.py), off by default.

The ``demo`` preset (MobileNetV2, S=256, C=128, 4 heads, mask decoder 128 channels) is
sized for a CPU: at 256 px the stride-16 grid is 16x16, enough for the 3-9 object
synthetic scenes (a small object still covers 2-3 cells), and a forward pass costs about
a tenth of the paper model's, so it trains on a CPU in under an hour and answers the demo
in well under a second. C=128 keeps the decoder cheap; the synthetic vocabulary is small.
"""
from __future__ import annotations

from typing import Callable

from ..backbones import build_backbone
from .decoder import MutualDecoder
from .fusion import SentenceFusion
from .language import LanguageEncoder
from .lfr import LanguageReconstruction
from .mask_head import MaskHead
from .mmi import MMI
from .vision import VisionEncoder

_COMMON = dict(backbone_weights="default", encoder_layers=2, decoder_layers=2, word_dim=300, attention="mutual",
               fusion="product", imi=True, lfr=True, lfr_weight=0.1, mask_weight=1.0, dropout=0.1, t_max=15,
               frozen_backbone=False, dice_weight=0.0, word_gate=False, sentence_fusion=False,
               language_norm=False, coord_features=False, aux_weight=0.0, skip_fusion=False)


def paper_darknet53() -> dict:
    """The paper's CNN model: Darknet-53 at 416, C=256, 8 heads, mask decoder 512 (T=20 for RefCOCOg)."""
    return dict(_COMMON, backbone="darknet53", image_size=416, dim=256, heads=8, head_channels=512)


def paper_swin_b() -> dict:
    """The paper's transformer-backbone model: Swin-B at 480."""
    return dict(_COMMON, backbone="swin_b", image_size=480, dim=256, heads=8, head_channels=512)


def demo() -> dict:
    """The shipped demo model: ImageNet MobileNetV2 at 256, C=128 (see the module docstring)."""
    return dict(_COMMON, backbone="mobilenet_v2", image_size=256, dim=128, heads=4, head_channels=128)


def tiny() -> dict:
    """For tests: a tiny CNN at 64 px, C=32."""
    return dict(_COMMON, backbone="tiny", backbone_weights=None, image_size=64, dim=32, heads=2, head_channels=32,
                encoder_layers=1, t_max=8, dropout=0.0)


PRESETS: dict[str, Callable[[], dict]] = {
    "paper_darknet53": paper_darknet53,
    "paper_swin_b": paper_swin_b,
    "demo": demo,
    "tiny": tiny,
}


def resolve_config(preset: str, vocab_size: int, **overrides) -> dict:
    """The full settings of ``preset`` with ``overrides`` applied; unknown keys are errors."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]()
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown} for preset {preset!r}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if cfg["image_size"] % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {cfg['image_size']}")
    return dict(preset=preset, vocab_size=int(vocab_size), **cfg)


def build_model(preset: str, vocab_size: int, **overrides) -> MMI:
    """Assemble the MMI network of ``preset`` for a vocabulary of ``vocab_size`` words."""
    cfg = resolve_config(preset, vocab_size, **overrides)
    backbone = build_backbone(cfg["backbone"], weights=cfg["backbone_weights"])
    dim, heads, t_max, drop = cfg["dim"], cfg["heads"], cfg["t_max"], cfg["dropout"]
    vision = VisionEncoder(tuple(backbone.out_channels), dim, heads, cfg["encoder_layers"], drop,
                          coords=cfg["coord_features"])
    language = LanguageEncoder(cfg["vocab_size"], dim, cfg["word_dim"], drop, norm=cfg["language_norm"])
    decoder = MutualDecoder(dim, heads, t_max, cfg["decoder_layers"], cfg["attention"], cfg["imi"], cfg["fusion"], drop,
                           gate=cfg["word_gate"])
    head = MaskHead(dim, backbone.out_channels[0], cfg["head_channels"], skip_fusion=cfg["skip_fusion"])
    lfr = LanguageReconstruction(dim, t_max) if cfg["lfr"] else None
    sentence = SentenceFusion(dim, drop) if cfg["sentence_fusion"] else None
    return MMI(backbone, vision, language, decoder, head, lfr, cfg["image_size"], t_max,
               cfg["lfr_weight"], cfg["mask_weight"], cfg["frozen_backbone"], cfg["dice_weight"], config=cfg,
               sentence_fusion=sentence, aux_weight=cfg["aux_weight"])


def build_model_from_config(config: dict) -> MMI:
    """Rebuild a model from ``model.config`` (weights are then loaded from a checkpoint,
    so no pretrained backbone file is read)."""
    cfg = dict(config)
    preset, vocab_size = cfg.pop("preset"), cfg.pop("vocab_size")
    cfg["backbone_weights"] = None
    model = build_model(preset, vocab_size, **cfg)
    model.config["backbone_weights"] = config.get("backbone_weights")
    return model
