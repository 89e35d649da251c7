"""Command-line options from settings declarations, and what several commands share.

A settings dataclass declares each setting once (`bksdm_ext.settings`); `add_settings`
turns its fields into options and `settings_from` turns the parsed options back into the
dataclass.  Options default to None, so the dataclass's own default applies to what the
user left out, and the help texts show the dataclass's defaults.
"""
import argparse
import os
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Type, TypeVar

from ..errors import BadInput
from ..settings import Declared, declarations

Settings = TypeVar("Settings")


class Switch(argparse.Action):
    """``--name`` sets a boolean setting, ``--no-name`` clears it: one option, both senses
    (argparse.BooleanOptionalAction does this from Python 3.9; the Jetson stack has 3.8)."""

    def __init__(self, option_strings: List[str], dest: str, **kwargs: Any) -> None:
        names = [name for option in option_strings
                 for name in (option, "--no-" + option[len("--"):])]
        super().__init__(names, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))

    def format_usage(self) -> str:  # Python 3.9+ shows this in the usage line
        return " | ".join(self.option_strings)


def add_settings(parser: argparse.ArgumentParser, settings: Type[Any],
                 only: Optional[Iterable[str]] = None) -> None:
    """An option for each of `settings`' fields that has a flag (or each one named in
    `only`), in declaration order."""
    chosen = None if only is None else set(only)
    for item in declarations(settings):
        if item.setting.cli and (chosen is None or item.name in chosen):
            add_setting(parser, item)


def add_setting(parser: argparse.ArgumentParser, item: Declared) -> None:
    s = item.setting
    options = dict(dest=item.name, default=None, help=item.help() or None)
    if item.switch:
        parser.add_argument(item.flag, action=Switch, **options)
    elif item.repeated:
        parser.add_argument(item.flag, action="append", type=item.kind, **options)
    else:
        parser.add_argument(item.flag, type=item.kind, choices=s.choices, metavar=s.metavar,
                            required=s.required, **options)


def settings_from(args: argparse.Namespace, settings: Type[Settings]) -> Settings:
    """The settings the options give; the dataclass's defaults for those left out."""
    given = {item.name: getattr(args, item.name) for item in declarations(settings)
             if item.setting.cli and getattr(args, item.name, None) is not None}
    return settings(**given)


def add_json(parser: argparse.ArgumentParser, help: Optional[str] = None) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_resolved_paths(parser: argparse.ArgumentParser, *dests: str) -> None:
    flags = " and ".join("--" + dest.replace("_", "-") for dest in dests)
    parser.add_argument("--resolved-paths", dest="resolved_paths", action="store_true",
                        help="refuse %s when it no longer resolves to itself: the WebUI passes "
                             "the resolved paths it checked, so a link put in their way since "
                             "is not followed" % flags)
    parser.set_defaults(resolved_path_args=dests)


def check_resolved_paths(args: argparse.Namespace) -> None:
    """With --resolved-paths, each data path must still be the place it was checked as."""
    if not getattr(args, "resolved_paths", False):
        return
    for dest in args.resolved_path_args:
        value = getattr(args, dest, None)
        if value and os.path.isabs(value) and os.path.realpath(value) != value:
            raise BadInput("--%s %s: a link now stands in the path that was checked; nothing "
                           "was read from it; check the folder and start the job again"
                           % (dest.replace("_", "-"), value))


def progress_bar(label: str) -> Callable[[int, int], None]:
    """A tqdm bar on stderr for `progress(done, total)` callbacks over tensors."""
    from tqdm import tqdm

    bar: List[Optional[Any]] = [None]

    def update(done: int, total: int) -> None:
        if bar[0] is None:
            bar[0] = tqdm(total=total, desc=label, unit="tensor", leave=False)
        bar[0].update(done - bar[0].n)
        if done == total:
            bar[0].close()

    return update


def render_info(info: Any) -> str:
    """A result as aligned ``key  value`` lines, whole numbers with thousands separators."""
    width = max(map(len, info))
    return "\n".join("%-*s  %s" % (width, k, format(v, ",") if isinstance(v, int) and not
                                   isinstance(v, bool) else v) for k, v in info.items())


def add_clip_folder(parser: argparse.ArgumentParser) -> None:
    """``--clip-folder``: where else a CLIP found, not named, may be (as optional as one in
    the Hugging Face cache)."""
    parser.add_argument("--clip-folder", dest="clip_folders", action="append", default=[],
                        type=Path, metavar="DIR",
                        help="another folder to look for a CLIP file in when --clip-model is "
                             "not given (the WebUI passes its interrogator's); repeatable. A "
                             "CLIP found is optional: one that cannot be read leaves the CLIP "
                             "score empty")
