"""Form fields made from a settings dataclass's declarations (`bksdm_ext.settings`): the
label and the default a tab shows are the ones the setting declares."""
from typing import Any

import gradio as gr

from ..settings import label


def number(defaults: Any, name: str, **options: Any) -> gr.Number:
    """A number box for one of a settings object's fields: its label (unless `options`
    give one), its value there."""
    options.setdefault("label", label(defaults, name))
    return gr.Number(getattr(defaults, name), **options)


def checkbox(defaults: Any, name: str, **options: Any) -> gr.Checkbox:
    """A check box for one of a settings object's booleans: its label, its value there."""
    return gr.Checkbox(getattr(defaults, name), label=label(defaults, name), **options)
