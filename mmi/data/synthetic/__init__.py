"""The built-in synthetic referring world (``synref``, ``synref_long``).

scene (symbolic objects, sampling, splits) -> renderer (image, visible masks) ->
resolver (which objects a description picks out) -> expressions / language (checked
descriptions and their English) -> exporter (refer-layout files). Command line:
``python -m mmi.data.synthetic --out DIR --images N --seed S``.

Splits: train / val / testA / testB / compositional. testA = crowded scenes (7 to 9
objects), testB = sparse scenes (3 to 5 objects); compositional = objects whose
(colour, shape) combination (:data:`HELD_OUT`) never occurs in any other split's images.
"""
from .exporter import GeneratedImage, SynthConfig, ann_id_of, generate_image, write_dataset
from .expressions import TYPES, Expression, describe_object, describe_scene
from .renderer import render, visible_masks
from .resolver import Desc, Relation, resolve, resolves_uniquely
from .scene import HELD_OUT, Scene, SceneObject, sample_scene, split_of

__all__ = [
    "Desc", "Expression", "GeneratedImage", "HELD_OUT", "Relation", "Scene", "SceneObject", "SynthConfig", "TYPES",
    "ann_id_of", "describe_object", "describe_scene", "generate_image", "render", "resolve", "resolves_uniquely",
    "sample_scene", "split_of", "visible_masks", "write_dataset",
]
