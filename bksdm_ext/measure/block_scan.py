"""Block sensitivity analysis (the paper's appendix C, Fig. 19) for the user's own teacher.

Each unit is taken out of the teacher alone, without retraining, and the same prompts and
seeds are rendered again; the change against the full teacher's images (PSNR, SSIM) says
how much the model relies on that unit, and, where a CLIP model is on the machine (or
named), the change of the CLIP score says how much the images drift from their prompts.  A unit whose removal leaves a valid student
(mid, innermost, a stage's Base-like pair ``down.S.L,up.S.M``) is removed for real, with
the student built from the teacher's weights.  A single layer cannot go alone (its skip
connection would be left over), so it is bypassed instead: its input is passed on, with a
channel interpolation where the layer changes the width (marked "stand-in", as the paper's
"*"): for the analysis only.  Rows also carry the unit's parameters, its FLOPs share of a
step and the measured U-Net milliseconds per step saved (the block picker's measured
step-time estimate).

As a background job the scan is resumable like a training run: each unit's row is
checkpointed as it is measured (``checkpoints/step-N``: the first N units) and the full
teacher's images are kept beside them, so a stopped or killed scan continues where it was.
"""
import copy
import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import BadInput
from ..jobs.runs import RunPaths
from ..model.arch import Architecture
from ..model.blocks import INNERMOST, MID, which_student, teacher_units
from ..model.checkpoint import Checkpoint
from ..model.hashing import a1111_sha256
from ..model.keymap import student_sources
from ..model.unit_costs import UnitCosts
from ..scores.clip import HOW_TO_ENABLE, ClipScorer
from ..settings import GUIDANCE, IMAGE_SIZE, SAMPLER_STEPS, SEED, check_ranges, setting
from .latency import LatencySettings, Stopwatch, device_name, load_pipeline
from .quality import psnr, ssim

DEFAULT_PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    "a bowl of fruit on a wooden table, still life",
    "a lighthouse on a cliff at sunset",
    "portrait of an old man with a beard, studio lighting",
)
Progress = Callable[[int, int, str], None]
SCAN_SO_FAR = "scan.json"  # in each checkpoint: the rows measured until then
TEACHER_IMAGES = "teacher-images.safetensors"  # in the run folder: what every unit is held to


@dataclass
class ScanSettings:
    prompts: Sequence[str] = DEFAULT_PROMPTS  # the command line reads them from --prompts FILE
    steps: int = setting(20, range=SAMPLER_STEPS, label="Steps")
    size: int = setting(512, range=IMAGE_SIZE, label="Size (px)")
    cfg_scale: float = setting(7.0, range=GUIDANCE)
    seed: int = setting(0, range=SEED)
    # Also each stage's pair (down.S.1 with up.S.1), as Fig. 19b.
    groups: bool = setting(True, "also each stage's down.S.1+up.S.1 pair (--no-groups: single "
                                 "units only)")

    def __post_init__(self) -> None:
        check_ranges(self)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class UnitResult:
    unit: str
    how: str  # "removed" (a real student) or "stand-in" (bypassed / channel-interpolated)
    psnr: float
    ssim: float
    params: int
    step_share: float  # FLOPs of the unit / FLOPs of the teacher's step
    ms_per_step: float
    ms_saved: float
    clip_score: Optional[float] = None  # mean over the prompts; None without a CLIP model
    clip_change: Optional[float] = None  # clip_score minus the full teacher's


@dataclass
class ScanResult:
    teacher: str
    teacher_sha256: str
    settings: Dict[str, Any]
    teacher_ms_per_step: float
    rows: List[UnitResult] = field(default_factory=list)
    device: str = ""  # where the milliseconds were measured
    clip_model: str = ""  # "" when no CLIP model scored the images
    teacher_clip_score: Optional[float] = None

    def ranked(self) -> List[UnitResult]:
        """Most damaging first (lowest SSIM, then lowest PSNR)."""
        return sorted(self.rows, key=lambda r: (r.ssim, r.psnr))

    def as_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["rows"] = [asdict(r) for r in self.ranked()]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ScanResult":
        rows = [UnitResult(**r) for r in data.get("rows", [])]
        return cls(**dict(data, rows=rows))

    def step_time_ratio(self, units: Sequence[str]) -> Optional[float]:
        """A student's U-Net step time relative to the teacher's, from the milliseconds this
        scan measured each of `units` (single units, as `removed_units` lists them) to save;
        None when the scan lacks one of them."""
        saved = {r.unit: r.ms_saved for r in self.rows}
        if not self.teacher_ms_per_step or any(u not in saved for u in units):
            return None
        return (self.teacher_ms_per_step - sum(saved[u] for u in units)) / self.teacher_ms_per_step


def scan_units(arch: Architecture, groups: bool) -> List[str]:
    """What to take out, one row each: every unit, then each stage's layer pairs."""
    units = teacher_units(arch.teacher)
    if groups:
        n = arch.teacher.layers_per_stage
        units += ["down.%d.%d,up.%d.%d" % (s, n - 1, s, n - 1) for s in range(arch.teacher.stages)]
    return units


def scan(teacher: Union[str, Path], settings: ScanSettings, progress: Optional[Progress] = None,
         device: Optional[torch.device] = None, clip: Optional[ClipScorer] = None,
         run: Optional[RunPaths] = None, resume: bool = False) -> ScanResult:
    """Every unit of `scan_units` removed in turn; `clip` adds the CLIP-score columns.
    With `run` (a job's run folder) each row is checkpointed as it is measured, and
    `resume` continues from the last checkpoint there."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(teacher)
    ckpt = Checkpoint(path)
    start = run.resume_point(resume) if run is not None else None
    sha256, clip_model = a1111_sha256(path), clip.name if clip else ""
    so_far = _scan_so_far(start, sha256, settings, clip_model) if start is not None else None
    latency = LatencySettings(steps=settings.steps, size=settings.size,
                              cfg_scale=settings.cfg_scale, seed=settings.seed)
    pipe, info = load_pipeline(path, latency.sampler, device)
    if info.is_student:
        raise BadInput("%s is a BK-SDM %s student; scan its teacher" % (path, info.preset))
    costs = UnitCosts(ckpt, info.arch)
    teacher_flops = costs.student_flops(info.arch)
    teacher_unet = pipe.unet
    if so_far is not None:
        result, reference = so_far
    else:
        reference, teacher_ms = _render(pipe, settings, device)
        result = ScanResult(teacher=str(path), teacher_sha256=sha256,
                            settings=asdict(settings), teacher_ms_per_step=teacher_ms,
                            device=device_name(device), clip_model=clip_model,
                            teacher_clip_score=_clip_score(clip, reference, settings))
        if run is not None:
            _keep_teacher_images(run, reference)
    teacher_clip, teacher_ms = result.teacher_clip_score, result.teacher_ms_per_step
    units = scan_units(info.arch, settings.groups)
    for done in range(len(result.rows), len(units)):  # a resumed scan: after those it has
        unit = units[done]  # (the same units: the same teacher and settings)
        if progress is not None:
            progress(done, len(units), unit)
        pipe.unet, how = _without(teacher_unet, info.arch, unit)
        images, ms = _render(pipe, settings, device)
        params = flops = 0.0
        for part in unit.split(","):
            p, f = costs.unit(part)
            params, flops = params + p, flops + f
        score = _clip_score(clip, images, settings)
        result.rows.append(UnitResult(
            unit=unit, how=how, psnr=float(psnr(images, reference).mean()),
            ssim=float(ssim(images, reference).mean()), params=int(params),
            step_share=round(flops / teacher_flops, 4), ms_per_step=ms, ms_saved=teacher_ms - ms,
            clip_score=score, clip_change=None if score is None else score - teacher_clip))
        if run is not None:
            run.write_checkpoint(done + 1, lambda folder: _write_json(
                asdict(result), folder / SCAN_SO_FAR), keep_last=1)  # in unit order
    pipe.unet = teacher_unet
    if progress is not None:
        progress(len(units), len(units), "")
    return result


def _keep_teacher_images(run: RunPaths, images: torch.Tensor) -> None:
    """The full teacher's images, for a resumed scan to hold its units to the same ones."""
    from safetensors.torch import save_file

    target = run.out / TEACHER_IMAGES
    temp = target.with_name(target.name + ".tmp")
    run.out.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(temp))
    temp.replace(target)


def _scan_so_far(checkpoint: Path, sha256: str, settings: ScanSettings, clip_model: str
                 ) -> Tuple[ScanResult, torch.Tensor]:
    """The rows in `checkpoint` and the teacher's images they were measured against;
    refused when they are of another teacher, settings or CLIP model (a mix of two scans)."""
    from safetensors.torch import load_file

    run = checkpoint.parent.parent
    try:
        result = ScanResult.from_dict(json.loads((checkpoint / SCAN_SO_FAR).read_text(
            encoding="utf-8")))
        reference = load_file(str(run / TEACHER_IMAGES))["images"]
        same = (result.teacher_sha256 == sha256 and result.clip_model == clip_model and
                ScanSettings(**result.settings).key() == settings.key())
    except (OSError, ValueError, TypeError, KeyError) as e:  # a damaged checkpoint
        raise BadInput("%s: cannot continue this scan (%s); start it again with another "
                       "--out" % (checkpoint, e)) from None
    if not same:
        raise BadInput("%s holds a scan of another teacher, or with other settings or CLIP "
                       "model; resume with the same ones or choose another --out" % run)
    return result, reference


def _write_json(data: Dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _render(pipe: Any, settings: ScanSettings, device: torch.device) -> Any:
    """The prompts' images as [N, 3, H, W] in [0, 1] (one seed each) and U-Net ms per step."""
    watch = Stopwatch(device, pipe.unet)
    try:
        images = []
        for i, prompt in enumerate(settings.prompts):
            out = pipe(prompt, height=settings.size, width=settings.size,
                       num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale,
                       generator=torch.Generator().manual_seed(settings.seed + i), output_type="pt")
            images.append(out.images.float().cpu())
        calls = watch.take()
    finally:
        watch.close()
    return torch.cat(images).clamp(0, 1), 1000 * sorted(calls)[len(calls) // 2]


def _clip_score(clip: Optional[ClipScorer], images: torch.Tensor, settings: ScanSettings
                ) -> Optional[float]:
    """The mean CLIP score of the images with their prompts (None without a CLIP model)."""
    return None if clip is None else float(clip.score(images, list(settings.prompts)).mean())


def _without(unet: torch.nn.Module, arch: Architecture, units: str) -> Any:
    """(the teacher U-Net without `units`, "removed" or "stand-in")."""
    try:
        removed = which_student(arch.teacher, None, units)
    except BadInput:
        return _bypassed(unet, arch, units), "stand-in"
    return _student(unet, removed), "removed"


def _student(unet: torch.nn.Module, student: Architecture) -> torch.nn.Module:
    """A real student built from the teacher's weights (the conversion's weight map)."""
    from diffusers import UNet2DConditionModel

    state = unet.state_dict()
    sources = student_sources(student, state, naming="diffusers")
    parameter = next(unet.parameters())
    model = UNet2DConditionModel(**student.diffusers_config())
    model.load_state_dict({s: state[t] for s, t in sources.items()}, strict=True)
    return model.to(parameter.device, parameter.dtype).eval()


def _bypassed(unet: torch.nn.Module, arch: Architecture, unit: str) -> torch.nn.Module:
    """The teacher with one layer (resnet + attention) replaced by a pass-through."""
    if unit in (MID, INNERMOST) or "," in unit:
        raise BadInput("%s: not a single layer" % unit)  # these are always valid removals
    side, stage, layer = unit.split(".")
    model = copy.deepcopy(unet)
    index = int(stage) if side == "down" else arch.teacher.stages - 1 - int(stage)
    block = (model.down_blocks if side == "down" else model.up_blocks)[index]
    resnet = block.resnets[int(layer)]
    block.resnets[int(layer)] = ChannelInterpolation(resnet.in_channels, resnet.out_channels)
    if getattr(block, "attentions", None) is not None:
        block.attentions[int(layer)] = PassThrough()
    return model


class ChannelInterpolation(torch.nn.Module):
    """Stands in for a removed resnet: its input, linearly resampled along the channels
    when the widths differ (the identity when they do not)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return hidden_states
        n, c, h, w = hidden_states.shape
        flat = hidden_states.permute(0, 2, 3, 1).reshape(n * h * w, 1, c)
        resized = torch.nn.functional.interpolate(flat, size=self.out_channels, mode="linear",
                                                  align_corners=True)
        return resized.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2).contiguous()


class PassThrough(torch.nn.Module):
    """Stands in for a removed attention block (diffusers reads element 0 of its output)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,)


# -- results on disk ----------------------------------------------------------------


def teacher_hash(teacher: Union[str, Path]) -> str:
    """The teacher's A1111 SHA-256 (the cache key); BadInput when it is not a checkpoint."""
    return a1111_sha256(Checkpoint(teacher).path)


def cached(cache_dir: Path, sha256: str, settings: ScanSettings,
           clip_model: Optional[str] = None) -> Optional[ScanResult]:
    """The scan of that teacher with these settings, unless `clip_model` (a CLIP model to
    score with now) is not the one it was scored with: a scan without CLIP scores is not
    an answer once a CLIP is available."""
    path = cache_dir / ("%s-%s.json" % (sha256[:12], settings.key()))
    if not path.is_file():
        return None
    result = ScanResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    if clip_model is not None and result.clip_model != clip_model:
        return None
    return result


def latest_for(cache_dir: Path, sha256: str) -> Optional[ScanResult]:
    """The newest scan of that teacher, whatever its settings (what the WebUI shows)."""
    found = sorted(cache_dir.glob("%s-*.json" % sha256[:12]), key=lambda p: p.stat().st_mtime)
    return ScanResult.from_dict(json.loads(found[-1].read_text(encoding="utf-8"))) if found else None


def save(result: ScanResult, cache_dir: Path) -> Path:
    """Into the cache, under the teacher's hash and the settings' key (temp name, then rename)."""
    settings = ScanSettings(**result.settings)
    path = cache_dir / ("%s-%s.json" % (result.teacher_sha256[:12], settings.key()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    _write_json(result.as_dict(), temp)
    temp.replace(path)
    return path


def write_csv(result: ScanResult, path: Path) -> Path:
    import csv

    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(UnitResult.__dataclass_fields__))
        writer.writeheader()
        for row in result.ranked():
            writer.writerow(asdict(row))
    temp.replace(path)
    return path


def can_plot() -> bool:
    """Whether matplotlib is there: A1111 has it (gradio needs it); the `train` extra does
    not bring it, so a headless scan draws no chart unless one was asked for."""
    return importlib.util.find_spec("matplotlib") is not None


def plot(result: ScanResult, path: Path) -> Path:
    """A bar chart like Fig. 19: SSIM against the teacher per unit, U-Net order, stand-ins
    hatched; below it, when the scan has CLIP scores, each removal's change of CLIP score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    panels = 2 if result.clip_model else 1
    fig, axes = plt.subplots(panels, 1, sharex=True, squeeze=False,
                             figsize=(max(6, 0.45 * len(rows)), 1 + 3 * panels))
    top = axes[0][0]
    _bars(top, rows, [r.ssim for r in rows], "SSIM vs. teacher (higher: less damage)")
    top.set_ylim(min(0.0, min((r.ssim for r in rows), default=0)), 1.0)
    top.set_title("Removing one block at a time, no retraining (* = channel-interpolation "
                  "stand-in)", fontsize=9)
    if result.clip_model:
        bottom = axes[1][0]
        _bars(bottom, rows, [r.clip_change or 0.0 for r in rows],
              "CLIP score change (%s)" % Path(result.clip_model).name)
        bottom.axhline(0, color="black", linewidth=0.5)
    bottom_axis = axes[-1][0]
    bottom_axis.set_xticks(range(len(rows)))
    bottom_axis.set_xticklabels([r.unit.replace(",", "+") + ("*" if r.how == "stand-in" else "")
                                 for r in rows], rotation=70, fontsize=7)
    fig.tight_layout()
    temp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(str(temp), dpi=100)
    plt.close(fig)
    temp.replace(path)
    return path


def _bars(ax: Any, rows: List[UnitResult], values: List[float], label: str) -> None:
    """One bar per unit, the stand-ins hatched."""
    bars = ax.bar(range(len(rows)), values, color="#4c72b0")
    for bar, row in zip(bars, rows):
        if row.how == "stand-in":
            bar.set_hatch("//")
    ax.set_ylabel(label, fontsize=8)


def table(result: ScanResult) -> str:
    lines = ["%-24s %-9s %8s %7s %13s %7s %9s %7s %7s" % (
        "unit", "how", "PSNR", "SSIM", "parameters", "of step", "ms saved", "CLIP", "ΔCLIP")]
    for r in result.ranked():
        lines.append("%-24s %-9s %8.2f %7.4f %13s %6.1f%% %9.2f %7s %7s" % (
            r.unit, r.how, r.psnr, r.ssim, format(r.params, ","), 100 * r.step_share, r.ms_saved,
            _optional(r.clip_score), _optional(r.clip_change, "%+.2f")))
    lines.append(clip_note(result))
    return "\n".join(lines)


def clip_note(result: ScanResult) -> str:
    """What the CLIP columns are, or how to get them."""
    if not result.clip_model:
        return "CLIP score: " + HOW_TO_ENABLE
    return ("CLIP score with %s: the full teacher scores %.2f; ΔCLIP is each removal's change"
            % (result.clip_model, result.teacher_clip_score))


def _optional(value: Optional[float], form: str = "%.2f") -> str:
    return "-" if value is None else form % value
