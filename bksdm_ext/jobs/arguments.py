"""A job's command line, written from its settings so that no value is read as an option.

Every argument list a job runs goes through `command_line`: each value is joined to its
option (``--negative-prompt=-blurry``), which argparse takes as the value whatever it
starts with, and positional values follow ``--``.  A prompt that starts with ``-`` (a
sample, negative or instance prompt) is then a prompt, not an unknown option.  A settings
dataclass (`bksdm_ext.settings`) writes its own part with `config_argv`.
"""
from typing import Any, Dict, List, Mapping, Sequence

from ..settings import declarations


def command_line(options: Mapping[str, Any], positional: Sequence[str] = ()) -> List[str]:
    """``{"steps": 400, "use_8bit_adam": True, "lora": False, "sample_prompt": ["-a", "b"]}``
    → ``--steps=400 --use-8bit-adam --sample-prompt=-a --sample-prompt=b``: True is the bare
    flag; None, False and "" leave the option out; a list repeats it; then ``-- POSITIONAL``."""
    argv: List[str] = []
    for key, value in options.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None or item is False or item == "":
                continue
            option = "--" + key.replace("_", "-")
            argv.append(option if item is True else "%s=%s" % (option, item))
    if positional:
        argv += ["--"] + [str(value) for value in positional]
    return argv


def config_argv(settings: Any, positional: Sequence[str] = ()) -> List[str]:
    """The command line that makes `settings` again: every setting that has a flag, in
    declaration order (a boolean as ``--name`` or ``--no-name``; None and "" left out, so
    the command's own default applies), through `command_line`."""
    options: Dict[str, Any] = {}
    for item in declarations(settings):
        if not item.setting.cli:
            continue
        value = getattr(settings, item.name)
        key = item.flag[2:]
        if item.switch and value is False:
            key, value = "no-" + key, True
        options[key] = list(value) if item.repeated else value
    return command_line(options, positional)
