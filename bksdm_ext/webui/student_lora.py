"""Teacher LoRAs on a loaded BK-SDM student, through A1111's built-in Lora extension.

That extension resolves each module of a LoRA file by name in ``sd_model.network_layer_mapping``
(every module of the loaded model, "." written "_"), with SD's full block numbering for
kohya's diffusers-style names (docs/facts.md §12).  A student numbers its blocks otherwise,
so without help a teacher's LoRA lands on other blocks or nowhere, silently.

Its loader ``networks.load_network(name, network_on_disk)`` has that name and signature in
1.6.1 and 1.10.1, ``load_networks`` looks it up on the module at each call, and it reads the
model's mapping at each lookup.  So, while it reads one file, the mapping is one made for
that file: `lora_keymap` decides the layout the file was made for and the model module of
each of its U-Net modules, and the name the extension will look each module up under leads
there.  The network's modules are then renamed to the model's own layer names, which is
how the extension finds them when it changes weights.  A file that fits no layout is
refused: the extension reports the error and leaves the LoRA out.  What a student could
not take is said once per LoRA and generation, on the console and in the infotext
(``BK-SDM: …``), by an always-visible script whose ``after_extra_networks_activate`` both
versions call after each activation, the hires pass's included; so is an LCM-LoRA drawn at
other settings than it was distilled for (`recommendation`).

The extension keeps networks between generations; those resolved for another block layout
are forgotten when a model loads.
"""
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch

from modules import scripts, shared

from ..errors import BadInput
from ..model.arch import Architecture
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..model.keymap import UNET_PREFIX
from ..model.lora_adapt import read_lora
from ..model.lora_keymap import LoraMismatch, LoraPlan, ModelModules, plan_lora, underscored
from . import recommendation

UNET_ROOT = "diffusion_model"  # the U-Net's name in network_layer_mapping
INFOTEXT_KEY = "BK-SDM"
_refused: Dict[str, str] = {}  # LoRA name -> why it was left out, until the next report


class Layout(NamedTuple):
    """The loaded model's block layout and its weight-bearing U-Net modules."""

    arch: Architecture
    modules: ModelModules

    @property
    def key(self) -> Tuple[Any, ...]:
        return (self.arch.teacher.family,) + self.arch.kept()


def lora_networks() -> Optional[ModuleType]:
    """The built-in Lora extension's ``networks`` module, once its script has loaded it."""
    module = sys.modules.get("networks")
    wanted = ("load_network", "convert_diffusers_name_to_compvis", "loaded_networks")
    return module if module is not None and all(hasattr(module, a) for a in wanted) else None


def install() -> bool:
    """Wrap the Lora extension's loader (once); False while the extension is not loaded."""
    networks = lora_networks()
    if networks is None:
        return False
    original = networks.load_network
    if getattr(original, "bksdm_original", None) is not None:
        return True

    def load_network(name: str, network_on_disk: Any) -> Any:
        return _load(original, networks, name, network_on_disk)

    load_network.bksdm_original = original  # type: ignore[attr-defined]
    networks.load_network = load_network
    return True


def loaded_layout(sd_model: Any) -> Optional[Layout]:
    """What the loaded model is (None: not an SD-v1/v2 model this extension knows),
    remembered on the model for its checkpoint."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = Path(getattr(info, "filename", "") or "")
    remembered = getattr(sd_model, "bksdm_layout", None)
    if remembered is not None and remembered[0] == filename:
        return remembered[1]
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if unet is None:
        return None
    if filename.suffix == ".safetensors" and filename.is_file():
        ckpt = Checkpoint(filename)  # its header: a custom student's removal is in the metadata
    else:
        ckpt = Checkpoint(filename, state={UNET_PREFIX + k: v for k, v in unet.state_dict().items()})
    try:
        arch: Optional[Architecture] = inspect_checkpoint(ckpt).arch
    except BadInput:
        arch = None
    layout = None if arch is None else Layout(arch, ModelModules(
        {name: tuple(m.weight.shape) for name, m in unet.named_modules()
         if isinstance(getattr(m, "weight", None), torch.Tensor)}))
    sd_model.bksdm_layout = (filename, layout)
    return layout


def _load(original: Callable[..., Any], networks: ModuleType, name: str,
          network_on_disk: Any) -> Any:
    model = shared.sd_model
    layout = loaded_layout(model)
    plan = None
    # On a teacher only a LoRA made for a student needs translating; any other is A1111's.
    if layout is not None and (not layout.arch.is_teacher or _made_for_a_student(network_on_disk)):
        plan = _plan(name, network_on_disk.filename, layout)
    if plan is None:
        net = original(name, network_on_disk)
    else:
        if not hasattr(model, "network_layer_mapping"):
            networks.assign_network_names_to_compvis_modules(model)
        own = model.network_layer_mapping
        model.network_layer_mapping, renames = _file_mapping(networks, own, plan)
        try:
            net = original(name, network_on_disk)
        finally:
            model.network_layer_mapping = own
        net.modules = {renames.get(k, k): m for k, m in net.modules.items()}
        for key in set(renames.values()) & set(net.modules):
            net.modules[key].sd_key = key
    net.bksdm_layout = None if layout is None else layout.key
    net.bksdm_note = None if plan is None else plan.note()
    return net


def _made_for_a_student(network_on_disk: Any) -> bool:
    """Whether the file's metadata (read by A1111 already) names a student layout."""
    preset = (getattr(network_on_disk, "metadata", None) or {}).get("bksdm.preset")
    return preset not in (None, "teacher")


def _plan(name: str, filename: str, layout: Layout) -> Optional[LoraPlan]:
    """Where the file's modules go; None for a file the key map does not read (the
    extension handles it as usual); LoraMismatch, remembered for the report, for one that
    cannot apply."""
    try:
        _, lora = read_lora(filename)
    except BadInput:
        return None
    lora.name = name
    try:
        plan = plan_lora(lora, layout.arch, layout.modules)
    except LoraMismatch as e:
        _refused[name] = str(e)
        raise
    _refused.pop(name, None)
    return plan


def _file_mapping(networks: ModuleType, own: Dict[str, Any], plan: LoraPlan
                  ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The model's mapping for one file: its text-encoder part as it is, and for each U-Net
    module of the file only the name the extension looks it up under, leading to the model
    module the plan chose; and those names -> the model's own layer names."""
    is_sd2 = "model_transformer_resblocks" in own
    mapping = {k: v for k, v in own.items() if k != UNET_ROOT and not k.startswith(UNET_ROOT + "_")}
    renames = {}
    for key, target in plan.targets.items():
        layer = UNET_ROOT + "_" + underscored(target)
        lookup = networks.convert_diffusers_name_to_compvis(key, is_sd2)
        mapping[lookup] = own[layer]
        renames[lookup] = layer
    return mapping, renames


def forget_other_layouts(sd_model: Any) -> None:
    """``on_model_loaded``: networks the extension keeps that were resolved for another
    block layout would change the wrong layers of this model; the next use reloads them."""
    networks = lora_networks()
    if networks is None or not install():
        return
    layout = loaded_layout(sd_model)
    key = None if layout is None else layout.key

    def current(net: Any) -> bool:
        return hasattr(net, "bksdm_layout") and net.bksdm_layout == key

    for name, net in list(networks.networks_in_memory.items()):
        if not current(net):
            del networks.networks_in_memory[name]
    networks.loaded_networks[:] = [net for net in networks.loaded_networks if current(net)]


def report(p: Any) -> None:
    """Notes of the LoRAs just activated: each new one printed, all in the infotext."""
    networks = lora_networks()
    notes = {} if networks is None else {
        net.name: net.bksdm_note for net in networks.loaded_networks
        if getattr(net, "bksdm_note", None)}
    if networks is not None:
        for name, note in recommendation.lora_notes(p, networks.loaded_networks).items():
            notes[name] = "; ".join(filter(None, [notes.get(name), note]))
    notes.update({name: "not applied: " + why for name, why in _refused.items()})
    _refused.clear()
    told: Dict[str, str] = getattr(p, "bksdm_lora_notes", {})
    for name, note in notes.items():
        if told.get(name) != note:
            print("%s: %s" % (INFOTEXT_KEY, note))
    told.update(notes)
    p.bksdm_lora_notes = told
    if told:
        p.extra_generation_params[INFOTEXT_KEY] = "; ".join(told.values())


class LoraNotes(scripts.Script):
    """The per-generation part: the loader is in place before the first activation, and
    after each one what a student could not take is said."""

    def title(self) -> str:
        return "BK-SDM: LoRAs on students"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def process(self, p: Any, *args: Any) -> None:
        install()

    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None:
        report(p)
