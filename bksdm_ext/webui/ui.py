"""The BK-SDM tab: Convert and Latency; Distill, DreamBooth and Jobs say what is coming."""
from typing import List, Tuple

import gradio as gr

from . import convert_tab, latency_tab

COMING = {
    "Distill": "Retrain a converted student by knowledge distillation from its teacher "
               "(task + output-KD + feature-KD), as a background job. Not built yet; until then "
               "use the paper's official training code.",
    "DreamBooth": "Personalise a student with DreamBooth (full or LoRA) as a background job. "
                  "Not built yet.",
    "Jobs": "Progress, loss curves and samples of running distillation and DreamBooth jobs. "
            "Not built yet.",
}


def on_ui_tabs() -> List[Tuple[gr.Blocks, str, str]]:
    with gr.Blocks(analytics_enabled=False) as ui:
        with gr.Tabs(elem_id="bksdm_tabs"):
            with gr.Tab("Convert", elem_id="bksdm_tab_convert"):
                convert_tab.build()
            for title, text in COMING.items():
                with gr.Tab(title, elem_id="bksdm_tab_" + title.lower()):
                    gr.Markdown(text, elem_classes=["bksdm-coming"])
            with gr.Tab("Latency", elem_id="bksdm_tab_latency"):
                latency_tab.build()
    return [(ui, "BK-SDM", "bksdm")]
