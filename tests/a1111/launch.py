"""Stand-in for A1111 1.10.1 ``launch.py``: what an extension's ``install.py`` imports (see modules/launch_utils.py),
and ``git_tag`` (the WebUI version, ``processing.program_version`` reads it)."""

from modules.launch_utils import args, python, is_installed, run_pip, run_extension_installer, git_tag  # noqa: F401
