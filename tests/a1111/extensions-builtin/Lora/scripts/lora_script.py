"""Stand-in for A1111 1.10.1 ``extensions-builtin/Lora/scripts/lora_script.py``: patches the layers, registers
``assign_network_names_to_compvis_modules`` on model load, the ``lora`` extra network (alias ``lyco``) before the
UI is built, the undo of the patches when scripts unload, and the extension's options (through
``opts.add_option``: the stand-in's options exist before scripts load). Not kept: the Lora tab, its API routes
and infotext-paste handlers."""
import extra_networks_lora
import networks
import lora_patches
from modules import extra_networks, script_callbacks, shared


def unload():
    networks.originals.undo()


def before_ui():
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)
    extra_networks.register_extra_network_alias(networks.extra_network_lora, "lyco")


networks.originals = lora_patches.LoraPatches()

script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
script_callbacks.on_script_unloaded(unload)
script_callbacks.on_before_ui(before_ui)

for key, info in {
    "lora_add_hashes_to_infotext": shared.OptionInfo(True, "Add Lora hashes to infotext"),
    "lora_in_memory_limit": shared.OptionInfo(0, "Number of Lora networks to keep cached in memory"),
}.items():
    shared.opts.add_option(key, info)
