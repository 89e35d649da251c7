"""Stand-in for A1111 1.10.1 ``modules/shared_cmd_options.py``: ``parser`` and the parsed ``cmd_opts``.

The flags come from ``$COMMANDLINE_ARGS`` (never ``sys.argv``, which is pytest's); ``standin_app.reset(...,
args=[...])`` parses its own list and replaces ``cmd_opts`` here and in ``shared``.
"""

import os
import shlex

from modules import cmd_args

parser = cmd_args.parser
cmd_opts = parser.parse_args(shlex.split(os.environ.get("COMMANDLINE_ARGS", "")))
