"""Stand-in for A1111 1.10.1 ``modules/shared.py``: the program-wide objects.

As in 1.10.1, ``opts`` and ``state`` stay None until start-up (``standin_app.reset``, which ``import
standin_app`` runs once) creates them, and ``shared.sd_model`` is a property of the module's class
(``shared_items.Shared``) that goes through ``sd_models.model_data``.
"""

from modules import options, paths_internal, shared_cmd_options, shared_items

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser
config_filename = cmd_opts.ui_settings_file

sd_configs_path = paths_internal.sd_configs_path
sd_default_config = paths_internal.sd_default_config

demo = None
device = None
weight_load_location = None
settings_components = None
tab_names = []

state = None  # modules.shared_state.State
opts = None  # modules.options.Options

OptionInfo = options.OptionInfo
list_checkpoint_tiles = shared_items.list_checkpoint_tiles
refresh_checkpoints = shared_items.refresh_checkpoints
