"""The ``bksdm`` command line: the same jobs as the WebUI tab, for scripts and labs.

One module per command family, each with its commands' parsers (``add``), the function
that runs a command (``run``: a dict, printed as JSON with --json) and the one that shows
the result to a person (``render``) side by side.  A command's settings are the fields of
its settings dataclass: `flags.add_settings` makes the options, `flags.settings_from` the
dataclass again (docs/architecture.md, "Settings and the command line").
"""
import argparse
import json
import sys
from typing import List, Optional

from .. import __version__
from ..errors import BadInput, DiskError, Stopped
from . import bench, blocks, convert, demo, evaluate, jobs, training, transplant
from .flags import check_resolved_paths

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
# In the order `bksdm --help` lists them.
FAMILIES = (convert, transplant, training, jobs, blocks, bench, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bksdm", description="Make Stable Diffusion small and fast with BK-SDM.")
    parser.add_argument("--version", action="version", version="bksdm " + __version__)
    commands = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_resolved_paths(args)
        result = args.run(args)
    except BadInput as e:
        print("bksdm %s: error: %s" % (args.command, e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as e:
        print("bksdm %s: %s" % (args.command, e), file=sys.stderr)
        return EXIT_STOPPED
    except OSError as e:  # a full, read-only or forbidden disk: the user's to fix
        problem = DiskError.of(e)
        if problem is None:
            raise
        print("bksdm %s: error: %s" % (args.command, problem), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bksdm %s: interrupted; nothing was written" % args.command, file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else args.render(result))
    return 0
