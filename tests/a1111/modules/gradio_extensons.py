"""Stand-in for A1111 1.10.1 ``modules/gradio_extensons.py`` (sic): patches gradio 3.41 process-wide, as the WebUI
does: every component accepts ``tooltip=`` (sent to the page as ``webui_tooltip`` in its config), and every
component and layout block gets the css class ``gradio-<block name>`` (``gradio-button``, ``gradio-dropdown``...).
``standin_app.create_ui`` imports it (the real ``modules/ui.py`` does). No before/after_component callbacks."""

import gradio as gr


def add_classes_to_gradio_component(comp):
    classes = ["gradio-" + comp.get_block_name()] + list(comp.elem_classes or [])
    if getattr(comp, "multiselect", False):
        classes.append("multiselect")
    comp.elem_classes = classes


def IOComponent_init(self, *args, **kwargs):
    self.webui_tooltip = kwargs.pop("tooltip", None)
    original_IOComponent_init(self, *args, **kwargs)
    add_classes_to_gradio_component(comp=self)


def Block_get_config(self):
    config = dict(original_Block_get_config(self))
    if getattr(self, "webui_tooltip", None):
        config["webui_tooltip"] = self.webui_tooltip
    config.pop("example_inputs", None)
    return config


def BlockContext_init(self, *args, **kwargs):
    original_BlockContext_init(self, *args, **kwargs)
    add_classes_to_gradio_component(comp=self)


original_IOComponent_init = gr.components.IOComponent.__init__
original_Block_get_config = gr.blocks.Block.get_config
original_BlockContext_init = gr.blocks.BlockContext.__init__

gr.components.IOComponent.__init__ = IOComponent_init
gr.blocks.Block.get_config = Block_get_config
gr.blocks.BlockContext.__init__ = BlockContext_init
