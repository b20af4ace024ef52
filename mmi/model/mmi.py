"""The MMI network, composed from parts passed in."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoder import MutualDecoder
from .language import LanguageEncoder
from .lfr import LanguageReconstruction
from .mask_head import MaskHead
from .vision import VisionEncoder


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, averaged over the batch: logits and target (B, 1, h, w)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class MMI(nn.Module):
    """Image and expression in; mask logits (and attention) out.

    Arguments:
        backbone: module mapping (B, 3, S, S) to [f8, f16, f32].
        vision: VisionEncoder (levels -> pixel tokens). language: LanguageEncoder.
        decoder: MutualDecoder. mask_head: MaskHead. lfr: LanguageReconstruction or None.
        image_size: S. t_max: T. lfr_weight, mask_weight: the loss weights.
        frozen_backbone: keep the backbone's weights and BatchNorm statistics fixed.
        dice_weight: weight of an optional soft Dice loss added to the BCE (0 in the paper's
        presets). Objects covering ~1% of the image leave plain BCE dominated by background.
        config: the JSON-safe dict that ``build_model_from_config`` rebuilds this from.
        sentence_fusion: optional SentenceFusion applied to the pixel tokens before the
        decoder (multiplicative fusion with the sentence feature f_s; fusion.py).
        aux_weight: deep supervision [practice, optional training aid]: a linear layer shared
        by all decoder layers predicts the mask on the stride-16 grid from each layer's output,
        with the same BCE (+ Dice) loss against the area-downsampled target, averaged over the
        layers and weighted by this. 0 (default) adds nothing. Training only: inference
        outputs are unchanged. Without it the decoder learns only through the mask head.
        refiner: a MaskRefiner or None; refine_only: train it alone (refine.py).
        selector: a RegionSelector or None, applied out of training to the final logits;
        select_only: train it alone (select.py).
        places: a WordPlaces or None, applied to the decoder's output (where each word's object
        lies from each pixel, places.py); places_only: train it alone.
    """

    def __init__(self, backbone: nn.Module, vision: VisionEncoder, language: LanguageEncoder, decoder: MutualDecoder,
                 mask_head: MaskHead, lfr: LanguageReconstruction | None, image_size: int, t_max: int,
                 lfr_weight: float = 0.1, mask_weight: float = 1.0, frozen_backbone: bool = False,
                 dice_weight: float = 0.0, config: dict | None = None, sentence_fusion: nn.Module | None = None,
                 aux_weight: float = 0.0, refiner: nn.Module | None = None, refine_only: bool = False,
                 selector: nn.Module | None = None, select_only: bool = False, places: nn.Module | None = None,
                 places_only: bool = False):
        super().__init__()
        if refine_only and refiner is None:
            raise ValueError("refine_only trains the refiner alone, but this model has none (refine_channels=0)")
        if select_only and selector is None:
            raise ValueError("select_only trains the region selector alone, but this model has none (select_regions off)")
        if places_only and places is None:
            raise ValueError("word_places_only trains the word-places block alone, but this model has none (word_places off)")
        if refine_only + select_only + places_only > 1:
            raise ValueError("refine_only, select_only and word_places_only each train one part alone: set one of them")
        self.backbone, self.vision, self.language = backbone, vision, language
        self.decoder, self.mask_head, self.lfr = decoder, mask_head, lfr
        self.sentence_fusion = sentence_fusion
        self.aux_weight = float(aux_weight)
        self.aux_head = nn.Linear(vision.dim, 1) if self.aux_weight > 0 else None
        self.image_size, self.t_max = image_size, t_max
        self.lfr_weight, self.mask_weight, self.dice_weight = lfr_weight, mask_weight, dice_weight
        self.config = dict(config or {})
        self.refiner = refiner
        self.refine_only = bool(refine_only)
        self.selector = selector
        self.select_only = bool(select_only)
        self.places = places
        self.places_only = bool(places_only)
        self.frozen_backbone = frozen_backbone or self.refine_only or self.select_only or self.places_only
        self.feature_cache = None  # a FeatureCache of memoised_part()'s outputs (training speed-up), not saved
        if self.frozen_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        if self.trains_alone:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith(self.trains_alone + "."))
            self.train(self.training)

    @property
    def trains_alone(self) -> str | None:
        """The one child trained while every other weight stays fixed: "refiner" (``refine_only``),
        "selector" (``select_only``), "places" (``places_only``) or None."""
        for name, alone in (("refiner", self.refine_only), ("selector", self.select_only), ("places", self.places_only)):
            if alone:
                return name
        return None

    def train(self, mode: bool = True) -> "MMI":
        """As ``nn.Module.train``; a frozen backbone stays in eval mode (its BatchNorm
        statistics stay those of its pretraining), and so does everything
        but the part trained alone with ``refine_only``, ``select_only`` or ``places_only``."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        if self.trains_alone:
            for name, child in self.named_children():
                if name != self.trains_alone:
                    child.eval()
        return self

    @property
    def reads_images(self) -> bool:
        """Whether every image of a batch must be loaded even when a feature memo holds its
        backbone outputs (the refiner's stem reads the image itself)."""
        return self.refiner is not None

    def memoised_part(self) -> nn.Module | None:
        """The part of the backbone whose outputs never change in training, for a FeatureCache:
        the whole backbone when frozen, its fixed first blocks when only those are
        (``backbone_frozen_blocks``), None when all of it trains."""
        if self.frozen_backbone:
            return self.backbone
        if getattr(self.backbone, "frozen_blocks", 0):
            return self.backbone.frozen_part()
        return None

    def set_word_vectors(self, table: torch.Tensor) -> None:
        """Initialise the word embedding from a (V, word_dim) table."""
        emb = self.language.embed.weight
        if table.shape != emb.shape:
            raise ValueError(f"word vectors of shape {tuple(table.shape)} do not fit the embedding {tuple(emb.shape)}")
        with torch.no_grad():
            emb.copy_(table.to(emb))

    def encode_image(self, image: torch.Tensor | None, names: list[str] | None = None,
                     present: list[bool] | None = None) -> dict:
        """image (B, 3, S, S) -> language-free features: ``pixels`` (B, HW, C), ``pos``
        (1, HW, C), ``skip`` (B, C', S/8, S/8), the mask head's projection of the stride-8
        level, and ``hw`` (H, W).

        With a ``feature_cache``, ``names`` and ``present`` (B each, a training batch whose
        loader skipped the images the memo holds, ``data.collate``), ``image`` holds only the
        present rows (None when none are)."""
        if self.reads_images and (image is None or (present is not None and not all(present))):
            raise ValueError("the refiner reads the image itself: every image of the batch must be loaded "
                             "(a feature memo keyed by image name leaves them out)")
        part = self.memoised_part() if self.feature_cache is not None else None
        if part is None and names is not None and not all(present or [True]):
            raise ValueError("images left out of the batch need the feature memo (model.feature_cache)")
        if part is self.backbone:
            feats = self.feature_cache(part, image, names, present)
        elif part is not None:  # the fixed blocks memoised, the trained ones run
            feats = self.backbone.forward_from(self.feature_cache(part, image, names, present))
        else:
            feats = self.backbone(image)
        pixels, pos, hw = self.vision(feats)
        out = {"pixels": pixels, "pos": pos, "skip": self.mask_head.project_skip(feats[0]), "hw": hw}
        if self.refiner is not None:
            out["low"] = self.refiner.encode(image)
        return out

    def decode(self, feats: dict, words: torch.Tensor, word_mask: torch.Tensor, return_attention: bool = False) -> dict:
        """feats from ``encode_image`` (batch B or 1, broadcast), words (B, T), word_mask (B, T).

        Returns ``{"logits": (B, 1, S/4, S/4)}`` ((B, 1, S/2, S/2) with a refiner, the mask
        head's own then ``coarse_logits``; with a region selector, one region of each expression's
        mask, the logits it chose from then ``selected_from``) and, when asked, ``"attention"``: one dict
        per decoder layer with ``lav`` (B, heads, T, H, W) and ``val`` (B, heads, T, H, W).
        """
        out, _ = self._decode(feats, words, word_mask.bool(), self.language(words, word_mask.bool()), return_attention)
        return out

    def _decode(self, feats: dict, words: torch.Tensor, word_mask: torch.Tensor, lang: tuple, return_attention: bool,
                layer_outputs: list | None = None) -> tuple[dict, torch.Tensor]:
        B = words.shape[0]
        pixels, skip = feats["pixels"], feats["skip"]
        if pixels.shape[0] != B:
            if pixels.shape[0] != 1:
                raise ValueError(f"image features of batch {pixels.shape[0]} cannot serve {B} expressions")
            pixels, skip = pixels.expand(B, -1, -1), skip.expand(B, -1, -1, -1)
        if self.sentence_fusion is not None:
            pixels = self.sentence_fusion(pixels, lang[1])
        x, maps = self.decoder(pixels, feats["pos"], lang[0], word_mask, layer_outputs)
        H, W = feats["hw"]
        # every layer's maps stacked, (B, layers * heads, T, HW) a kind, once for the parts that read them
        stacked = ({k: torch.cat([m[k] for m in maps], 1) for k in maps[0]}
                   if self.places is not None or (self.selector is not None and self.selector.maps) else None)
        if self.places is not None:
            x = self.places(x, stacked["lav"], (H, W), lang[0], lang[1], word_mask)
        grid = x.transpose(1, 2).reshape(B, -1, H, W)
        if self.refiner is None and self.selector is None:
            out = {"logits": self.mask_head(grid, skip, lang[1])}
        else:  # both read the mask head's last features
            coarse, hidden = self.mask_head(grid, skip, lang[1], return_hidden=True)
            out = ({"logits": coarse} if self.refiner is None else
                   {"logits": self.refiner(feats["low"], hidden, coarse), "coarse_logits": coarse})
        if self.selector is not None:
            inputs = {"logits": out["logits"], "hidden": hidden, "grid": grid, "sentence": lang[1], "words": lang[0],
                      "word_mask": word_mask, "maps": None}
            if self.selector.maps:  # (B, 2, layers * heads, T, H, W): LAV and VAL
                inputs["maps"] = torch.stack([stacked["lav"], stacked["val"]], 1).unflatten(-1, (H, W))
            if self.training:
                out["select_inputs"] = inputs
            else:
                out["selected_from"] = out["logits"]
                out["logits"] = self.selector(**inputs)
        if return_attention:
            out["attention"] = [{k: v.reshape(*v.shape[:3], H, W) for k, v in m.items()} for m in maps]
        return out, x

    def _mask_loss(self, logits: torch.Tensor, mask: torch.Tensor, out: dict, suffix: str) -> torch.Tensor:
        """BCE (+ Dice) of logits (B, 1, h, w) against the mask (B, 1, S, S) area-downsampled to
        h x w, weighted; the terms are logged as ``loss_mask``/``loss_dice`` + suffix."""
        target = F.interpolate(mask.to(logits.dtype), size=logits.shape[-2:], mode="area").float()
        out["loss_mask" + suffix] = F.binary_cross_entropy_with_logits(logits.float(), target)
        loss = self.mask_weight * out["loss_mask" + suffix]
        if self.dice_weight > 0:
            out["loss_dice" + suffix] = dice_loss(logits.float(), target)
            loss = loss + self.dice_weight * out["loss_dice" + suffix]
        return loss

    def forward(self, batch: dict, return_attention: bool = False) -> dict:
        """batch: ``image`` (B, 3, S, S), ``words`` (B, T), ``word_mask`` (B, T) and, in
        training, ``mask`` (B, 1, S, S); optionally ``image_names`` and ``image_present``
        (see :meth:`encode_image`).

        Training mode returns ``loss``, ``loss_mask``, ``loss_lfr`` (when LFR is on),
        ``loss_mask_coarse`` (with a refiner, unless ``refine_only``) and ``logits``; with a
        region selector also ``loss_select``, its loss (added to ``loss``; with ``select_only``
        the whole of it), and ``select_count``, the expressions it counted; eval mode returns ``logits`` (B, 1, S/4, S/4), or S/2 with a
        refiner, and optionally ``attention`` (and ``selected_from`` with a region selector).
        """
        words, word_mask = batch["words"], batch["word_mask"].bool()
        lang = self.language(words, word_mask)
        layers = [] if self.training and self.aux_head is not None else None
        feats = self.encode_image(batch["image"], batch.get("image_names"), batch.get("image_present"))
        out, x = self._decode(feats, words, word_mask, lang, return_attention, layers)
        if not self.training:
            return out
        select = out.pop("select_inputs", None)  # what _decode gives the selector out of training
        if self.select_only:
            out["loss"], out["select_count"] = self.selector.loss(**select, mask=batch["mask"])
            out["loss_select"] = out["loss"].detach()
            return out
        loss = self._mask_loss(out["logits"], batch["mask"], out, "")
        if self.refine_only:
            out["loss"] = loss
            return out
        if self.refiner is not None:
            loss = loss + self._mask_loss(out["coarse_logits"], batch["mask"], out, "_coarse")
        if self.places_only:  # through the fixed mask head and refiner: their two masks
            out["loss"] = loss
            return out
        if layers:
            H, W = feats["hw"]
            small = F.interpolate(batch["mask"].float(), size=(H, W), mode="area")
            aux = 0.0
            for y in layers:  # (B, HW, C) -> (B, 1, H, W) logits at stride 16
                a = self.aux_head(y).float().transpose(1, 2).reshape(-1, 1, H, W)
                aux = aux + F.binary_cross_entropy_with_logits(a, small)
                if self.dice_weight > 0:
                    aux = aux + self.dice_weight * dice_loss(a, small)
            out["loss_aux"] = aux / len(layers)
            loss = loss + self.aux_weight * out["loss_aux"]
        if self.lfr is not None:
            out["loss_lfr"] = self.lfr(x, lang.clean if self.lfr.clean_target else lang[0], lang[1], word_mask)
            loss = loss + self.lfr_weight * out["loss_lfr"]
        if select is not None:  # trained beside the rest; its inputs detached, so it changes nothing else
            sel, out["select_count"] = self.selector.loss(**select, mask=batch["mask"])
            out["loss_select"] = sel.detach()
            loss = loss + sel
        out["loss"] = loss
        return out
