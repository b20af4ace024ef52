"""The MMI demo app, one module per tab.

- :mod:`webapp.common`: the shared predictor context, what the model knows, the caches
  (kept Segment results, download folders) and error handling;
- :mod:`webapp.segment`: the Segment tab (overlay, legend, words that mattered,
  heatmaps, exports) and the ``/segment`` and ``/word_importance`` APIs;
- :mod:`webapp.scenelab`: the Scene lab (fresh synthetic scenes, the world's verdicts,
  ground truth beside the prediction);
- :mod:`webapp.failures`: the Failure cases tab (results upload, the shipped results).

``app.py`` is the entry point (its flags); :func:`build_app` and :func:`launch` are what it
and the tests call.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from mmi.predictor import Predictor  # noqa: E402

from . import failures, scenelab, segment, serving  # noqa: E402
from .common import CSS, EXAMPLES_DIR, Context, ModelInfo, Results, Workdir, read_examples  # noqa: E402,F401
from .failures import failure_inputs, load_results  # noqa: E402,F401


def build_app(predictor: Predictor, results: str | None = None, data_root: str | None = None,
              examples_dir: str = EXAMPLES_DIR, checkpoint: str | None = None) -> gr.Blocks:
    """The Blocks app around ``predictor`` (serve it with :func:`launch`)."""
    info = ModelInfo(predictor, checkpoint)
    ctx = Context(predictor, info, Workdir(), Results(), [f"layer {i}" for i in range(1, predictor.num_layers + 1)],
                  results, data_root, examples_dir)
    with gr.Blocks(title="MMI referring segmentation") as demo:
        gr.Markdown("## MMI: referring image segmentation")
        gr.Markdown(info.summary(), elem_id="model-info")
        with gr.Accordion(f"The model's vocabulary ({len(info.words)} words)", open=False, elem_id="vocabulary"):
            gr.Markdown(info.vocabulary_markdown())
        with gr.Tab("Segment", elem_id="tab-segment"):
            segment.build(ctx)
        with gr.Tab("Scene lab", elem_id="tab-lab"):
            scenelab.build(ctx)
        with gr.Tab("Failure cases", elem_id="tab-failures"):
            failures.build(ctx)
        for fn, inputs, outputs in ctx.on_load:
            demo.load(fn, inputs, outputs, api_visibility="private")
    demo.mmi_context = ctx
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False,
           limits: "serving.Limits | None" = None, credentials: list | None = None) -> None:
    """Serve ``demo`` on ``host:port`` (no share link; our own error messages shown; the
    footer keeps the "Use via API" page) with ``limits`` (:class:`webapp.serving.Limits`,
    default ones when None) and Gradio's login when ``credentials`` [(user, password)]."""
    limits = limits or serving.Limits()
    serving.apply_limits(demo, limits)
    if getattr(demo, "mmi_context", None) is not None:
        demo.mmi_context.limits = limits  # the tabs' check of images sent inline
    demo.queue(default_concurrency_limit=2, max_size=limits.max_queue)
    serving.log.info(serving.describe(host, port, credentials, limits))
    demo.launch(server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
                quiet=quiet, footer_links=["api"], css=CSS, **serving.launch_kwargs(limits, credentials))
