"""Stand-in for A1111 1.10.1 ``modules/cmd_args.py``: ``parser`` with the few WebUI flags the stand-in
honours (same spellings and defaults as 1.10.1; others are rejected). Path defaults are taken from
``paths_internal`` when this module is (re)loaded: ``standin_app.reset`` reloads it after moving the paths.
"""

import argparse
import os

from modules import paths_internal as _paths

parser = argparse.ArgumentParser(prog="webui (stand-in)")
parser.add_argument("--data-dir", type=os.path.abspath, default=_paths.data_path, help="user data folder")
parser.add_argument("--models-dir", type=os.path.abspath, default=None, help="models folder; default: <data-dir>/models")
parser.add_argument("--lora-dir", type=os.path.abspath, default=os.path.join(_paths.models_path, "Lora"), help="LoRA folder (1.10.1 adds it in the built-in Lora extension's preload.py)")
parser.add_argument("--ckpt-dir", type=os.path.abspath, default=None, help="extra checkpoint folder")
parser.add_argument("--ui-settings-file", type=str, default=os.path.join(_paths.data_path, "config.json"), help="settings json")
parser.add_argument("--use-cpu", nargs="+", type=str.lower, default=[], help="tasks to run on the CPU ('all' for all)")
parser.add_argument("--no-half", action="store_true", help="keep the model in float32")
parser.add_argument("--lowram", action="store_true", help="read weights straight to the device")
parser.add_argument("--disable-model-loading-ram-optimization", action="store_true", help="no meta-device model creation")
parser.add_argument("--no-hashing", action="store_true", help="never compute checkpoint sha256")
parser.add_argument("--skip-install", action="store_true", help="launch.run_pip does nothing")
parser.add_argument("--hide-ui-dir-config", action='store_true', help="hide directory configuration from webui", default=False)
parser.add_argument("--freeze-settings", action="store_true", help="settings cannot change")
parser.add_argument("--gradio-allowed-path", action="append", default=[_paths.data_path], help="extra folder gradio may serve")
