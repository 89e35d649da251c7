"""Each setting is declared once: on its field in a settings dataclass.

`setting(default, help, ...)` makes the field, and its metadata (a `Setting`) says what the
rest of the code needs to know about the value: its command-line flag and help text (`cli`
builds every parser from them), its label in the WebUI (the tabs read labels and defaults
from here), its allowed range and its choices.  A settings dataclass checks its ranges when
it is made (`check_ranges`, from its ``__post_init__``), so the command line, the job runner
and the tabs refuse the same values with the same message; and it writes its own command
line for a background job (`jobs.arguments.config_argv`).  A field made without `setting`
(``max_grad_norm: float = 1.0``) is a setting of the code only, with no flag.

A tab turns its form numbers into settings with `from_form`, which also refuses what a form
can send besides numbers (an empty box, NaN, infinity, 2.5 for a count).

The limits keep one request within what the machine serving it can give: anyone who can
reach an exposed WebUI can send any number, and a value that makes a list of a billion
entries, an image of 100,000² pixels or a disk of sample grids stops the server for
everyone.  Each limit still allows what labs run from the command line: the upper ends are
many times the paper's settings.  The ranges here are shared by several settings; the rest
are declared on the field they bound.  This module sits at the top of the package, beside
`errors`, because every package may import it.
"""
import collections.abc
import math
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from .errors import BadInput

_KEY = "bksdm.setting"  # where a field's Setting sits in its metadata
REQUIRED = MISSING  # `setting`'s default for a field that has none
Settings = TypeVar("Settings")


@dataclass(frozen=True)
class Range:
    """low <= value <= high (whole numbers when both ends are ints), a multiple of
    `multiple_of`; `unit` says what the number counts, for the message."""

    low: float
    high: float
    unit: str = ""
    multiple_of: int = 1

    @property
    def whole(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def check(self, name: str, value: Any) -> None:
        """BadInput naming the setting (as its command-line flag) unless `value` fits."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and self.low <= value <= self.high
                and (not self.whole or value == int(value))
                and (self.multiple_of == 1 or value % self.multiple_of == 0)):
            raise BadInput("%s %s: give %s" % (flag(name), _shown(value), self.describe()))

    def describe(self) -> str:
        ends = "%s to %s" % (_shown(self.low), _shown(self.high))
        kind = ("a multiple of %d from " % self.multiple_of if self.multiple_of > 1 else
                "a whole number from " if self.whole else "a number from ")
        return kind + ends + (" (%s)" % self.unit if self.unit else "")


@dataclass(frozen=True)
class Setting:
    """What a field is besides its name, type and default.

    ``help`` is the command line's help text; ``{default}`` in it shows the default.
    ``flag`` is the option's name when it is not the field's (``--arch`` for ``preset``);
    a boolean gets ``--name`` and ``--no-name``.  ``cli=False``: no flag (a setting the
    code and the tabs use).  ``required``: the command line must give it (the field may
    still default to "" so that a form can make the settings before it is filled in).
    """

    help: str = ""
    label: str = ""  # in the WebUI
    range: Optional[Range] = None
    choices: Optional[Sequence[str]] = None
    flag: str = ""
    metavar: Optional[str] = None
    required: bool = False
    cli: bool = True

    def field(self, default: Any = REQUIRED) -> Any:
        """A dataclass field with this declaration and default (REQUIRED: none)."""
        if isinstance(default, list):
            return field(default_factory=lambda: list(default), metadata={_KEY: self})
        return field(default=default, metadata={_KEY: self})


def setting(default: Any = REQUIRED, help: str = "", **declared: Any) -> Any:
    """A settings dataclass field: its default and its `Setting` (help, label, range...)."""
    return Setting(help=help, **declared).field(default)


class Declared:
    """One field of a settings dataclass with its declaration, as the command line, the
    job runner and the tabs read it."""

    def __init__(self, item: Field) -> None:
        self.name = item.name
        self.setting: Setting = item.metadata.get(_KEY, Setting(cli=False))
        self.default = (item.default if item.default is not MISSING else
                        item.default_factory() if item.default_factory is not MISSING
                        else REQUIRED)
        self.kind, self.repeated = value_type(item.type)

    @property
    def flag(self) -> str:
        return self.setting.flag or flag(self.name)

    @property
    def switch(self) -> bool:
        """A boolean: ``--name`` / ``--no-name``."""
        return self.kind is bool

    def help(self) -> str:
        return self.setting.help.replace("{default}", shown_default(self.default))


def declarations(settings: Any) -> List[Declared]:
    """Every field of a settings dataclass (or object), in declaration order."""
    return [Declared(item) for item in fields(settings)]


def declaration(settings: Any, name: str) -> Declared:
    """The field `name` of a settings dataclass."""
    for item in declarations(settings):
        if item.name == name:
            return item
    raise KeyError(name)


def label(settings: Any, name: str) -> str:
    """The WebUI's label of a setting."""
    return declaration(settings, name).setting.label


def value_type(annotation: Any) -> Tuple[Any, bool]:
    """(the type of one value, whether the setting takes several): Optional[int] -> (int,
    False), Sequence[str] -> (str, True)."""
    origin, args = getattr(annotation, "__origin__", None), getattr(annotation, "__args__", ())
    if origin is Union:
        return value_type(next(a for a in args if a is not type(None)))
    if origin in (list, tuple, collections.abc.Sequence):
        return args[0], True
    return annotation, False


def declared(settings: Any) -> Dict[str, Range]:
    """The ranged fields of a settings dataclass (or object) and their ranges."""
    return {item.name: item.setting.range for item in declarations(settings)
            if item.setting.range is not None}


def check_ranges(settings: Any) -> None:
    """BadInput for the first field (None aside) outside its declared range."""
    for name, bound in declared(settings).items():
        value = getattr(settings, name)
        if value is not None:
            bound.check(name, value)


def from_form(cls: Type[Settings], **values: Any) -> Settings:
    """`cls` made from a tab's values: those of ranged fields come from number boxes (float,
    None when empty) and become ints or floats as the field's range says; the rest are
    passed as they are.  BadInput for anything out of range."""
    bounds = declared(cls)
    converted = {name: form_number(value, flag(name), bounds[name].whole)
                 if name in bounds else value for name, value in values.items()}
    return cls(**converted)


def form_number(value: Any, label: str, whole: bool = True) -> Any:
    """A number box's value as an int (`whole`) or a float; BadInput naming `label` when it
    is empty, not finite or (`whole`) has a fraction."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput("%s: enter a number" % label) from None
    if not math.isfinite(number) or (whole and number != int(number)):
        raise BadInput("%s %s: give a %sfinite number" % (label, _shown(value),
                                                          "whole " if whole else ""))
    return int(number) if whole else number


def flag(name: str) -> str:
    """How the command line spells a setting: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def shown_default(value: Any) -> str:
    """A default as help texts show it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value in ("", None) else str(value)


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return format(value, ",")
    return repr(value) if isinstance(value, str) else str(value)


# Ranges several settings share.
IMAGE_SIZE = Range(8, 2048, "pixels; 8 is the VAE's factor, 2,048 A1111's own txt2img limit",
                   multiple_of=8)
SAMPLER_STEPS = Range(1, 1000, "sampler steps; the schedulers have 1,000 timesteps")
GUIDANCE = Range(0.0, 100.0, "classifier-free guidance scale")
SEED = Range(0, 2 ** 32 - 1, "the range A1111 draws its seeds from")
TRAINING_STEPS = Range(1, 1_000_000, "optimizer steps; the paper's runs take 50,000")
EVERY = Range(0, 1_000_000, "steps; 0: never")
LOG_EVERY = Range(1, 1_000_000, "steps")
BATCH = Range(1, 1024, "images per step")
LEARNING_RATE = Range(0.0, 1.0, "learning rate")
KEEP_CHECKPOINTS = Range(1, 100, "checkpoints kept")
LORA_RANK = Range(1, 1024, "LoRA rank")
# Sample grids accumulate in the run folder (one image file each): steps / every of them.
MAX_SAMPLE_GRIDS = 1000


def check_sample_grids(steps: int, every: int, name: str = "sample_every") -> None:
    """BadInput when samples every `every` steps would write more than MAX_SAMPLE_GRIDS."""
    if every and steps // every > MAX_SAMPLE_GRIDS:
        raise BadInput("%s %d with %s steps writes %s sample grids; at most %s: sample every "
                       "%s steps or more" % (flag(name), every, format(steps, ","),
                                             format(steps // every, ","),
                                             format(MAX_SAMPLE_GRIDS, ","),
                                             format(-(-steps // MAX_SAMPLE_GRIDS), ",")))
