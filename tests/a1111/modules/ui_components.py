"""Stand-in for A1111 1.10.1 ``modules/ui_components.py``: ``ToolButton``, the small emoji button (class ``tool``)
the quicksettings refresh uses."""

import gradio as gr


class FormComponent:
    def get_expected_parent(self):
        return gr.components.Form


class ToolButton(FormComponent, gr.Button):
    """A one-symbol button that fits in a form row."""

    def __init__(self, *args, **kwargs):
        kwargs["elem_classes"] = ["tool"] + list(kwargs.get("elem_classes") or [])
        super().__init__(*args, **kwargs)

    def get_block_name(self):
        return "button"
