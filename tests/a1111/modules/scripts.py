"""Stand-in for A1111 1.10.1 ``modules/scripts.py``: ``basedir()``, ``ScriptFile`` and the file listings the page
uses. Loading extension scripts (1.10.1's ``load_scripts``) is ``standin_app.load_extension``; no Script classes."""

import os
from collections import namedtuple

from modules import paths_internal

current_basedir = paths_internal.script_path

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])


def basedir():
    """The folder of the script being loaded: its extension's folder, else the WebUI folder."""
    return current_basedir


def list_scripts(scriptdirname, extension, *, include_extensions=True):
    """``extension`` files in the WebUI's ``scriptdirname`` folder, then in each active extension's."""
    from modules import extensions

    root = extensions.Extension("webui", paths_internal.script_path)
    found = root.list_files(scriptdirname, extension)
    for ext in extensions.active() if include_extensions else []:
        found += ext.list_files(scriptdirname, extension)
    return found


def list_files_with_name(filename):
    """Paths of ``filename`` in the WebUI folder and in each active extension folder, where it exists."""
    from modules import extensions

    folders = [paths_internal.script_path] + [ext.path for ext in extensions.active()]
    return [os.path.join(d, filename) for d in folders if os.path.isfile(os.path.join(d, filename))]
