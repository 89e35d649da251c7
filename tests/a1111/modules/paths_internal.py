"""Stand-in for A1111 1.10.1 ``modules/paths_internal.py``: where the program and the user's data live.

``script_path`` is the stand-in folder (tests/a1111). ``data_path`` is ``$A1111_STANDIN_ROOT`` or a fresh
temporary folder, never the repository, deleted when the process exits (a test run leaves none behind);
``standin_app.reset(data_dir)`` re-points ``data_path``, ``models_path`` and ``extensions_dir`` (stand-in
modules read them from here at call time).
"""

import atexit
import os
import shutil
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sd_configs_path = os.path.join(script_path, "configs")  # the stand-in's own, reduced yaml files
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")  # SD-v1


def _own_temporary_folder() -> str:
    folder = tempfile.mkdtemp(prefix="a1111-standin-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


data_path = os.path.abspath(os.environ.get("A1111_STANDIN_ROOT") or _own_temporary_folder())
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")  # made at start-up; load_extension takes any folder
