"""The BK-SDM tab: Convert, Distill, DreamBooth, Jobs, Latency and Compare."""
from typing import List, Tuple

import gradio as gr

from . import compare_tab, convert_tab, distill_tab, dreambooth_tab, forge, jobs_tab, latency_tab
from .messages import message

SUB_TABS = (("Convert", convert_tab), ("Distill", distill_tab), ("DreamBooth", dreambooth_tab),
            ("Jobs", jobs_tab), ("Latency", latency_tab), ("Compare", compare_tab))


def on_ui_tabs() -> List[Tuple[gr.Blocks, str, str]]:
    not_yet = forge.TABS_NOT_YET if forge.is_forge() else {}
    with gr.Blocks(analytics_enabled=False) as ui:
        with gr.Tabs(elem_id="bksdm_tabs"):
            for title, tab in SUB_TABS:
                with gr.Tab(title, elem_id="bksdm_tab_" + title.lower()):
                    if title in not_yet:
                        gr.HTML(message("error", forge.not_yet_line(title)))
                    else:
                        tab.build()
    return [(ui, "BK-SDM", "bksdm")]
