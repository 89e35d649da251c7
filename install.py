"""A1111 runs this before it loads the extension: install what BK-SDM needs and the WebUI lacks.

Only missing packages are installed, each pinned to a version that imports beside the
WebUI's own pins on its Python (3.8 on Jetson, 3.10/3.11 on PCs), and with ``--no-deps``
so pip cannot upgrade or downgrade anything the WebUI already has; a dependency that is
itself missing is installed on its own.  With everything present it does nothing, as in
Forge, which pins its own diffusers (0.31.0) beside gradio 4.
"""
import importlib.metadata
import importlib.util
from typing import Dict

import launch

# distribution -> pinned requirement.  diffusers 0.30.3 is the one release that imports on
# A1111 1.10.1 (transformers 4.30.2) and on the Jetson's 1.6.1 (Python 3.8, torch 2.0.1).
REQUIREMENTS: Dict[str, str] = {"diffusers": "diffusers==0.30.3"}
# What diffusers 0.30.3 imports; the WebUI normally has them all.
DEPENDENCIES: Dict[str, str] = {
    "importlib-metadata": "importlib-metadata",
    "filelock": "filelock",
    "huggingface_hub": "huggingface_hub>=0.23.2,<1",
    "regex": "regex",
    "requests": "requests",
    "safetensors": "safetensors>=0.3.1",
    "Pillow": "Pillow",
}


def webui_name() -> str:
    """Forge runs this the way A1111 does, with its folder (and ``modules_forge``) on the path."""
    return "Forge" if importlib.util.find_spec("modules_forge") is not None else "the WebUI"


def install_missing() -> None:
    for name, requirement in REQUIREMENTS.items():
        if launch.is_installed(name):
            version = importlib.metadata.version(name)
            if requirement != "%s==%s" % (name, version):
                print("BK-SDM: keeping %s's %s %s (BK-SDM is tested with %s)"
                      % (webui_name(), name, version, requirement))
            continue
        launch.run_pip("install --no-deps %s" % requirement, "BK-SDM requirement: " + requirement)
        for dependency, pinned in DEPENDENCIES.items():
            if not launch.is_installed(dependency):
                launch.run_pip("install %s" % pinned, "BK-SDM requirement: " + pinned)


install_missing()
