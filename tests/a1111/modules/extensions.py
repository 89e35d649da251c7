"""Stand-in for A1111 1.10.1 ``modules/extensions.py``: the extension list (filled by
``standin_app.load_extension``), ``Extension.list_files`` and ``find_extension``. No git, no metadata.ini."""

import os

from modules import scripts

extensions = []
extension_paths = {}  # folder -> Extension


def active():
    return [e for e in extensions if e.enabled]


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False, metadata=None):
        self.name, self.path, self.enabled, self.is_builtin = name, path, enabled, is_builtin
        self.canonical_name = name.lower().strip()

    def list_files(self, subdir, extension):
        """``ScriptFile``s of the ``extension``-suffixed files directly in ``subdir``, by name."""
        folder = os.path.join(self.path, subdir)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        files = [scripts.ScriptFile(self.path, n, os.path.join(folder, n)) for n in names]
        return [f for f in files if os.path.splitext(f.filename)[1].lower() == extension and os.path.isfile(f.path)]


def find_extension(filename):
    """The registered extension whose folder holds ``filename``, or None."""
    folder = os.path.dirname(os.path.realpath(filename))
    while True:
        if folder in extension_paths:
            return extension_paths[folder]
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
