"""sd-webui-controlnet on a BK-SDM student: its control residuals reach the right blocks.

The extension's ``scripts/hook.py`` (``UnetHook.hook``) replaces the loaded U-Net's
``forward`` with one that walks the teacher's layout: 13 residuals for SD-1/2 (one per
teacher skip connection plus the middle), paired with the U-Net's skip features from the
end (docs/facts.md §12, §13).  On a student the pairs drift and the first step fails, or
draws wrong.  Nothing of the extension is edited: before each denoising step (A1111's
``on_cfg_denoiser``, which runs before the U-Net call in 1.6.1 and 1.10.1) the hooked
``forward`` of a loaded student is re-bound to a `TeacherLayoutView` of the student, so
the hook's own code walks the teacher's lists and every residual lands on the student
block that came from the teacher block it was made for.  ``restore()`` of the hook puts
the original ``forward`` back, ours with it.

Covered, because they add through that walk: ControlNet (several units at once, every
control mode and weighting the hook applies), ControlNet models of the union and
InstantID kinds, T2I-Adapters (their per-stage encoder additions), and the T2I style
adapter (prompt tokens, unaffected by the layout).  Control-LoRA models are refused on a
student: the extension builds them from the loaded U-Net's own blocks, which a student
lacks.  A version of the extension whose hook walks differently is refused too, with one
line, rather than drawing wrong.
"""
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from modules import shared

from ..errors import BadInput
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..model.teacher_layout import TeacherLayoutView, teacher_layout

HOOK_FORWARD = "UnetHook.hook.<locals>.forward_webui"
# Versions whose hook.py walks the U-Net exactly as 1.1.455 (its "U-Net Encoder" to
# "U-Net Output" code is the same in the extension's history from 1.1.410 on); 1.1.455
# was run for real with A1111 1.6.1 and 1.10.1.
KNOWN_VERSIONS = frozenset("1.1.%d" % n for n in range(410, 456))
# The statements of the walk the view relies on; another version is adapted only when
# its hook still has each of them.
WALK = (
    "total_controlnet_embedding = [0.0] * 13",
    "t2i_injection = [3, 5, 8] if is_sdxl else [2, 5, 8, 11]",
    "for i, module in enumerate(self.input_blocks):",
    "h = module(h, emb, context)",
    "hs.append(h)",
    "h = self.middle_block(h, emb, context)",
    "h = aligned_adding(h, total_controlnet_embedding.pop(), require_inpaint_hijack)",
    "for i, module in enumerate(self.output_blocks):",
    "h = th.cat([h, aligned_adding(hs.pop(), total_controlnet_embedding.pop(), "
    "require_inpaint_hijack)], dim=1)",
    "h = self.out(h)",
)
CONTROL_LORA = "ControlLoRA"

_students: Dict[Tuple[str, float, int], Any] = {}


def on_cfg_denoiser(params: Any) -> None:
    """``script_callbacks.on_cfg_denoiser``: adapt a ControlNet-hooked student before its step."""
    model = shared.sd_model
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is not None:
        adapt(unet, getattr(model, "sd_checkpoint_info", None))


def adapt(unet: Any, checkpoint_info: Any) -> None:
    """Re-bind the ControlNet hook's ``forward`` of a student U-Net (nothing for a teacher,
    an unhooked U-Net or one already adapted)."""
    forward = unet.__dict__.get("forward")
    function = getattr(forward, "__func__", None)
    if function is None or getattr(function, "__qualname__", "") != HOOK_FORWARD:
        return
    arch = _student_arch(checkpoint_info)
    if arch is None:
        return
    refusal = _refusal(function, arch, unet)
    if refusal:
        unet.forward = _refusing(refusal)
        return
    view = TeacherLayoutView(unet, teacher_layout(arch))

    def forward_on_student(*args: Any, **kwargs: Any) -> Any:
        return function(view, *args, **kwargs)

    unet.forward = forward_on_student


def version_of(hook_file: str) -> str:
    """sd-webui-controlnet's version, from the ``controlnet_version.py`` beside its hook."""
    path = Path(hook_file).with_name("controlnet_version.py")
    try:
        found = re.search(r"version_flag\s*=\s*['\"]v?([^'\"]+)['\"]", path.read_text("utf-8"))
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


def walks_as_known(function: Callable[..., Any]) -> bool:
    """Whether the hook's inner ``forward`` still has every statement of the known walk."""
    import inspect

    inner = _closure(function).get("forward")
    try:
        source = inspect.getsource(inner)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    lines = {" ".join(line.split()) for line in source.splitlines()}
    return all(statement in lines for statement in WALK)


def _refusal(function: Callable[..., Any], arch: Any, unet: Any) -> Optional[str]:
    """Why ControlNet cannot run on this student now, or None."""
    version = version_of(function.__code__.co_filename)
    if version not in KNOWN_VERSIONS and not walks_as_known(function):
        return ("BK-SDM: sd-webui-controlnet %s walks the U-Net differently from the versions "
                "BK-SDM knows (1.1.410-1.1.455), so its control would land on the wrong blocks "
                "of this %s student; use sd-webui-controlnet 1.1.455, or load the teacher"
                % (version, arch.removal.name))
    expected = teacher_layout(arch)
    kept = sum(source is not None for source in expected.skip_sources)
    if len(unet.input_blocks) != kept or len(unet.output_blocks) != kept:
        return ("BK-SDM: the loaded U-Net does not have the blocks of its file's %s layout "
                "(see the load warning); ControlNet is not applied to it: load it again"
                % arch.removal.name)
    outer = _closure(function).get("outer")
    for param in getattr(outer, "control_params", None) or []:
        kind = getattr(getattr(param, "control_model_type", None), "name", "")
        if kind == CONTROL_LORA or getattr(param.control_model, "is_control_lora", False):
            return ("BK-SDM: Control-LoRA models borrow the loaded U-Net's own blocks, and this "
                    "%s student has lost some of them; use a full ControlNet model with it, or "
                    "load the teacher" % arch.removal.name)
    return None


def _refusing(message: str) -> Callable[..., Any]:
    def forward_refused(*args: Any, **kwargs: Any) -> Any:
        raise BadInput(message)

    return forward_refused


def _closure(function: Callable[..., Any]) -> Dict[str, Any]:
    cells = function.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(function.__code__.co_freevars, cells)}


def _student_arch(checkpoint_info: Any) -> Any:
    """The loaded checkpoint's architecture when it is a BK student, else None (cached per file)."""
    filename = Path(getattr(checkpoint_info, "filename", "") or "")
    try:
        stat = filename.stat()
    except OSError:
        return None
    key = (str(filename), stat.st_mtime, stat.st_size)
    if key not in _students:
        try:
            info = inspect_checkpoint(Checkpoint(filename))
            _students[key] = info.arch if info.is_student else None
        except BadInput:
            _students[key] = None
    return _students[key]
