"""Stand-in for A1111 1.10.1 ``modules/scripts.py``: ``basedir()``, ``ScriptFile``, the file listings the page
uses, and always-visible ``Script`` classes with the processing hooks the stand-in's ``processing`` calls
(``process``, ``before_process_batch``, ``after_extra_networks_activate``, ``process_batch``). Loading extension
scripts (1.10.1's ``load_scripts``) is ``standin_app.load_extension``: as in 1.10.1 every ``Script`` subclass found
in a script module's namespace is registered; the txt2img runner (``scripts_txt2img``, which A1111's txt2img and API
put in ``p.scripts``) keeps an instance of each whose ``show(False)`` is ``AlwaysVisible``. Not kept: selectable
scripts, script UIs and their arguments (always-visible scripts here get no ``script_args``), img2img, sorting."""

import os
from collections import namedtuple

from modules import paths_internal

current_basedir = paths_internal.script_path

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
AlwaysVisible = object()


class Script:
    """An extension's hook into generation; every method is optional."""

    filename = None
    args_from = args_to = 0

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        """After the extra networks of a batch (or of the hires pass) were activated."""
        pass

    def process_batch(self, p, *args, **kwargs):
        pass


class ScriptRunner:
    def __init__(self):
        self.alwayson_scripts = []

    def _call(self, hook, p, **kwargs):
        from modules import errors

        for script in self.alwayson_scripts:
            try:
                getattr(script, hook)(p, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)


scripts_txt2img = ScriptRunner()


def _register_scripts_from_module(module, path):
    """(stand-in) what 1.10.1's load_scripts + initialize_scripts(is_img2img=False) do for txt2img."""
    import inspect

    for value in list(module.__dict__.values()):
        if inspect.isclass(value) and issubclass(value, Script) and value is not Script:
            script = value()
            script.filename = path
            if script.show(False) is AlwaysVisible:
                scripts_txt2img.alwayson_scripts.append(script)


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
