"""Files a gradio component hands to the extension: only what the visitor uploaded.

gradio 3.41's File and UploadButton take ``{"name": <path>, "data": null, "is_file": true}``
from the client and give the event handler a copy of whatever file ``<path>`` names on the
server (``File.preprocess`` → ``make_temp_copy_if_needed``), so a prompt file or an upload
could be any file the WebUI may read, also under --hide-ui-dir-config.  A1111 1.6.1 and
1.10.1 leave this as it is (their ``ui_tempdir.check_tmp_file`` guards only their own
image paste), so the extension's components check it: the page sends the names its
uploads got from gradio's ``/upload`` route, which saves them in gradio's upload folder
(``GRADIO_TEMP_DIR``, else ``<temp>/gradio``); any other name is refused before gradio
reads it.  Files sent inline (base64) are the visitor's own bytes and pass.

Use `File` and `UploadButton` instead of gradio's, and `received` in the handler.
"""
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import gradio as gr

from ..errors import BadInput, check_path_text
from . import paths


class Refused:
    """What a handler gets instead of the files when one of them was refused."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def refusal(entry: Any, upload_folder: str) -> Optional[str]:
    """Why the client's file entry may not reach the extension, or None: a name sent as a
    server path must be a file inside gradio's `upload_folder` (links resolved), and every
    name must be one a file system takes."""
    if not isinstance(entry, dict):
        return None
    name = str(entry.get("name") or "")
    shown = Path(name.replace("\0", "")).name[:80] or "the file"
    try:
        check_path_text(name, shown)
    except BadInput as e:
        return "%s; upload it again" % e
    if not entry.get("is_file"):
        return None
    real = Path(os.path.realpath(name))
    if not paths.is_inside(real, Path(os.path.realpath(upload_folder))) or not real.is_file():
        return ("%s: not a file uploaded from this page; only files chosen with the page's "
                "upload buttons are read" % shown)
    return None


class _Confined:
    """The check, run on what the client sent before gradio's own preprocessing."""

    DEFAULT_TEMP_DIR: str
    # gradio 4 (Forge) writes a .pyi beside a component subclass's module; Forge skips
    # classes with this attribute, so the extension's folder stays as installed.
    webui_do_not_create_gradio_pyi_thank_you = True

    def preprocess(self, x: Any) -> Any:
        for entry in x if isinstance(x, list) else [x]:
            problem = refusal(entry, self.DEFAULT_TEMP_DIR)
            if problem:
                return Refused(problem)
        return super().preprocess(x)  # type: ignore[misc]


# get_block_name: the page draws gradio's component (it knows no other)
class File(_Confined, gr.File):
    def get_block_name(self) -> str:
        return "file"


class UploadButton(_Confined, gr.UploadButton):
    def get_block_name(self) -> str:
        return "uploadbutton"


def received(value: Any) -> List[Tuple[Path, str]]:
    """(file on the server, the name the visitor's file had) for each file a `File` or
    `UploadButton` handed over; BadInput when it refused one."""
    if isinstance(value, Refused):
        raise BadInput(value.problem)
    files = value if isinstance(value, list) else [value]
    # gradio gives temp-file objects, each upload as <a folder of its own>/<the browser's
    # file name>; a path string is the same file given directly (as the tests do)
    pairs = []
    for f in files:
        if f:
            path = str(getattr(f, "name", f))
            pairs.append((Path(path), Path(getattr(f, "orig_name", None) or path).name))
    return pairs
