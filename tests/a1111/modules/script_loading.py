"""Stand-in for A1111 1.10.1 ``modules/script_loading.py``: runs a script file as a module named after the file
(not put in ``sys.modules``)."""

import importlib.util
import os

loaded_scripts = {}


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded_scripts.update({path: module})
    return module
