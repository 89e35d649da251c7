"""Stand-in for A1111 1.10.1 ``modules/launch_utils.py``: what ``launch.py`` gives an extension's ``install.py``.

``is_installed`` really checks (a distribution of that name, else an importable module). ``run_pip`` never runs
pip: it records ``dict(command=, desc=, live=)`` in ``run_pip_calls`` (nothing with --skip-install) and returns "".
``run_extension_installer`` runs ``install.py`` in this process (the WebUI folder and the extension's on sys.path,
as the real one's subprocess has) so those calls are recorded; errors are reported, not raised.
"""

import importlib.util
import os
import runpy
import shlex
import sys
from importlib.metadata import PackageNotFoundError, distribution

from modules import cmd_args, errors, paths_internal

args = cmd_args.parser.parse_known_args(shlex.split(os.environ.get("COMMANDLINE_ARGS", "")))[0]
python = sys.executable
default_command_live = os.environ.get("WEBUI_LAUNCH_LIVE_OUTPUT") == "1"

run_pip_calls = []


def is_installed(package):
    try:
        distribution(package)
        return True
    except PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def run_pip(command, desc=None, live=default_command_live):
    if not args.skip_install:
        run_pip_calls.append({"command": command, "desc": desc, "live": live})
        return ""


def run_extension_installer(extension_dir):
    installer = os.path.join(extension_dir, "install.py")
    if not os.path.isfile(installer):
        return
    saved = sys.path
    sys.path = [paths_internal.script_path, extension_dir] + saved
    try:
        runpy.run_path(installer, run_name="__main__")
    except Exception as e:
        errors.report(str(e))
    finally:
        sys.path = saved


def git_tag():
    """the WebUI's version tag (the real one asks git, then reads its changelog)"""
    return "v1.10.1"
