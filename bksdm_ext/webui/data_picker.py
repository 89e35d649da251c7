"""The data field the Distill and DreamBooth tabs share: a server folder typed in (only
inside the allowed roots, hidden under --hide-ui-dir-config), or an upload picked from a
list, with the button that uploads one."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

import gradio as gr

from ..errors import BadInput
from . import client_files, paths, uploads
from .messages import message


@dataclass
class Picker:
    typed: gr.Textbox
    uploaded: gr.Dropdown


@dataclass
class Kind:
    """What one tab uploads: photos (several images) or a training set (.zip)."""
    name: str  # "instances" or "datasets", the folder under bksdm/uploads/
    upload_label: str
    file_count: str
    file_types: List[str]


PHOTOS = Kind("instances", "Upload photos", "multiple", ["image"])
TRAINING_SET = Kind("datasets", "Upload a training set (.zip)", "single", [".zip"])


def build(kind: Kind, label: str, elem_id: str) -> Picker:
    """The typed folder (``#<elem_id>``), the uploads list (``#<elem_id>_uploaded``) with
    its ↻ (``#<elem_id>_refresh``), the upload button (``#<elem_id>_upload``) and its
    message (``#<elem_id>_upload_result``)."""
    with gr.Row():
        typed = gr.Textbox(label=label, elem_id=elem_id, scale=4,
                           visible=paths.typing_allowed())
        uploaded = gr.Dropdown(uploads.names(kind.name), label="or an uploaded one",
                               elem_id=elem_id + "_uploaded", scale=3)
        refresh = gr.Button("↻", elem_id=elem_id + "_refresh", scale=0, min_width=40)
        button = client_files.UploadButton(kind.upload_label, file_count=kind.file_count,
                                           file_types=kind.file_types,
                                           elem_id=elem_id + "_upload", scale=0)
    result = gr.HTML(elem_id=elem_id + "_upload_result")
    button.upload(lambda files: store(kind, files), inputs=[button], outputs=[uploaded, result])
    uploaded.select(lambda: "", outputs=[typed])  # a picked upload replaces a typed folder
    # The list is built once at start-up; ↻ lists the uploads made since, from any page.
    refresh.click(lambda: gr.update(choices=uploads.names(kind.name)), outputs=[uploaded])
    return Picker(typed, uploaded)


def store(kind: Kind, files: Any) -> Tuple[Any, str]:
    """Store what gradio received; the list gains the new upload, chosen."""
    try:
        pairs = client_files.received(files)
        if kind.name == PHOTOS.name:
            name = uploads.store_photos(pairs)
            text = "%s: %d photos stored." % (name, len(pairs))
        elif len(pairs) != 1:
            raise BadInput("Upload one .zip with the training set.")
        else:
            name, summary = uploads.store_training_set(*pairs[0])
            text = "%s: stored, %s." % (name, summary)
    except BadInput as e:
        return gr.update(), message("error", str(e))
    return gr.update(choices=uploads.names(kind.name), value=name), message("success", text)


def chosen_folder(kind: Kind, typed: str, uploaded: str, field: str) -> Path:
    """The folder the form names, resolved: the typed one when given (checked), else the
    upload."""
    if typed and typed.strip():
        return paths.typed_path(typed, field)
    if uploaded:
        return uploads.folder(kind.name, uploaded)
    where = "upload one" if not paths.typing_allowed() else "type a folder or upload one"
    raise BadInput("%s: none given; %s" % (field, where))
