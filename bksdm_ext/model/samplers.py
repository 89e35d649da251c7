"""The samplers every generating part offers, named as A1111 users know them, and the
sampler/steps/CFG a model was made for; importable without torch, so the command line
lists them in its help and choices."""
from dataclasses import dataclass
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BadInput
from ..settings import GUIDANCE, SAMPLER_STEPS, form_number

# sampler name -> (diffusers scheduler class name, extra config)
SAMPLERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    # Latent consistency models' multistep sampler (Luo et al., 2023): for students
    # consistency-distilled by `bksdm distill --objective lcm`, at 2-8 steps without CFG.
    "lcm": ("LCMScheduler", {}),
}
DEFAULT_SAMPLER = "dpmpp_2m_karras"  # DPM++ 2M Karras: the paper's Orin setup, A1111's default
DEFAULT_CFG = 7.5  # the paper's inference guidance scale (docs/facts.md §5), diffusers' default
# Names A1111's sampler dropdown shows for these (1.10.1; 1.6.1 has no "LCM").  The DPM++
# entries are left out: 1.9+ splits "DPM++ 2M Karras" into a sampler and a scheduler.
A1111_NAMES = {"euler": "Euler", "euler_a": "Euler a", "ddim": "DDIM", "lcm": "LCM"}
RECOMMENDED = ("bksdm.recommended_sampler", "bksdm.recommended_steps", "bksdm.recommended_cfg")


@dataclass(frozen=True)
class DrawPoint:
    """A sampler (this table's name), its steps and a CFG scale (None: the caller's own): where
    a model is timed or compared (``sampler:steps[:cfg]`` on the command line: ``euler_a:25``,
    ``lcm:4:1``), and how it is meant to draw.  A consistency-distilled student records the one
    it was distilled for in its metadata (``bksdm.recommended_*``, the sampler as A1111 names
    it), so the WebUI can show it."""

    sampler: str
    steps: int
    cfg_scale: Optional[float] = None

    @classmethod
    def parse(cls, text: str, known: Collection[str] = tuple(SAMPLERS),
              example: str = "euler_a:25 or lcm:4:1") -> "DrawPoint":
        """``sampler:steps[:cfg]``, the sampler one of `known` (this table's names, or
        A1111's where a tab draws through it); BadInput saying which and what to write."""
        parts = [part.strip() for part in text.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise BadInput("draw point %r: write sampler:steps or sampler:steps:cfg, e.g. %s"
                           % (text, example))
        if parts[0] not in known:
            raise BadInput("draw point %r: unknown sampler %r; one of %s"
                           % (text, parts[0], ", ".join(known)))
        try:
            steps = form_number(parts[1], "steps", whole=True)
            SAMPLER_STEPS.check("steps", steps)
            cfg = form_number(parts[2], "cfg_scale", whole=False) if len(parts) == 3 else None
            if cfg is not None:
                GUIDANCE.check("cfg_scale", cfg)
        except BadInput as e:
            raise BadInput("draw point %r: %s" % (text, e)) from None
        return cls(parts[0], steps, cfg)

    def metadata(self) -> Dict[str, str]:
        return dict(zip(RECOMMENDED, (A1111_NAMES.get(self.sampler, self.sampler),
                                      str(self.steps), "%g" % self.cfg_scale)))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Optional["DrawPoint"]:
        """The recommendation a file's metadata records; None without one (or a damaged one)."""
        if not all(key in metadata for key in RECOMMENDED):
            return None
        name, steps, cfg_scale = (metadata[key] for key in RECOMMENDED)
        sampler = next((k for k, v in A1111_NAMES.items() if v == name), name)
        try:
            return cls(sampler, int(steps), float(cfg_scale))
        except ValueError:
            return None

    def spec(self) -> str:
        """As `parse` reads it."""
        return "%s:%d%s" % (self.sampler, self.steps,
                            "" if self.cfg_scale is None else ":%g" % self.cfg_scale)

    def describe(self) -> str:
        return "%s, %d steps%s" % (A1111_NAMES.get(self.sampler, self.sampler), self.steps,
                                   "" if self.cfg_scale is None else ", CFG %g" % self.cfg_scale)


def parse_points(texts: Sequence[str], known: Collection[str] = tuple(SAMPLERS),
                 example: str = "euler_a:25 or lcm:4:1") -> List[DrawPoint]:
    """Draw points from texts, each one or several separated by commas."""
    return [DrawPoint.parse(text, known, example)
            for entry in texts for text in entry.split(",") if text.strip()]
