"""Stand-in for A1111 1.10.1 ``modules/options.py``: ``OptionInfo`` and ``Options`` (``shared.opts``).

Behaviour kept: options read as attributes (stored value, else the default; unknown names raise
AttributeError, so ``getattr(opts, key, default)`` works), ``restricted_opts`` cannot change under
``--hide-ui-dir-config`` (``set`` returns False), ``set`` runs the option's ``onchange`` and puts
the old value back if it fails, ``add_option``/``onchange``/``same_type``/``save``/``load``/``dumpjson``.
Not kept: comment helpers (``.info()``, ``.needs_reload_ui()``, ...), categories, ``reorder``, API restrictions.
"""
from __future__ import annotations

import json

from modules import errors, shared_cmd_options

_own_fields = ("data_labels", "data", "restricted_opts")


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):
        # every argument becomes an attribute of the same name
        fields = dict(locals())
        del fields["self"]
        self.__dict__.update(fields)
        self.do_not_save = False


class Options:
    typemap = {int: float}

    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts):
        self.data_labels, self.restricted_opts = data_labels, restricted_opts
        self.data = {key: info.default for key, info in data_labels.items()}

    def __setattr__(self, key, value):
        if key in _own_fields or key not in self.data_labels:
            object.__setattr__(self, key, value)
            return
        if shared_cmd_options.cmd_opts.freeze_settings:
            raise RuntimeError("settings are frozen (--freeze-settings)")
        if shared_cmd_options.cmd_opts.hide_ui_dir_config and key in self.restricted_opts:
            raise RuntimeError("not possible to set '%s' because it is restricted with --hide_ui_dir_config" % key)
        self.data[key] = value

    def __getattr__(self, item):
        # only reached when normal attribute lookup failed
        if item not in _own_fields:
            if item in self.data:
                return self.data[item]
            info = self.data_labels.get(item)
            if info is not None:
                return info.default
        raise AttributeError(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """Stores ``value``; True when it changed. A failing onchange callback undoes the change (False)."""
        previous = self.data.get(key)
        if previous == value:
            return False
        try:
            setattr(self, key, value)
        except RuntimeError:
            return False
        callback = self.data_labels[key].onchange
        if run_callbacks and callback is not None:
            try:
                callback()
            except Exception as e:
                errors.display(e, "changing setting %s to %s" % (key, value))
                self.data[key] = previous
                return False
        return True

    def save(self, filename):
        with open(filename, "w", encoding="utf8") as f:
            json.dump(self.data, f, indent=4, ensure_ascii=False)

    def same_type(self, x, y):
        if None in (x, y):
            return True
        kind = [self.typemap.get(type(v), type(v)) for v in (x, y)]
        return kind[0] is kind[1]

    def load(self, filename):
        """Replaces the stored values by the file's (defaults still answer for the rest); no file: none stored."""
        try:
            with open(filename, encoding="utf8") as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def dumpjson(self):
        return json.dumps({key: self.data.get(key, info.default) for key, info in self.data_labels.items()}, default=str)

    def add_option(self, key, info):
        self.data_labels.update({key: info})
        self.data.setdefault(key, info.default)
