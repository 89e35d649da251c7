"""Stand-in for A1111 1.10.1 ``modules/ui_common.py``: ``create_refresh_button``."""

import gradio as gr

from modules import ui_components

refresh_symbol = '\U0001f504'  # 🔄


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    """A ``ToolButton`` that calls ``refresh_method()``, then updates the component(s) with ``refreshed_args``
    (a dict, or a function returning one, e.g. fresh ``choices``); its tooltip is ``"<label>: refresh"``."""
    components = refresh_component if isinstance(refresh_component, list) else [refresh_component]
    label = next((c.label for c in components if getattr(c, "label", None)), None)

    def refresh():
        refresh_method()
        changes = (refreshed_args() if callable(refreshed_args) else refreshed_args) or {}
        for component in components:
            for field, value in changes.items():
                setattr(component, field, value)
        updates = [gr.update(**changes) for _ in components]
        return updates if len(updates) > 1 else updates[0]

    button = ui_components.ToolButton(value=refresh_symbol, elem_id=elem_id, tooltip=label + ": refresh" if label else "Refresh")
    button.click(fn=refresh, inputs=[], outputs=components)
    return button
