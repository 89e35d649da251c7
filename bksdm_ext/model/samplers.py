"""The samplers every generating part offers, named as A1111 users know them, and the
sampler/steps/CFG a model was made for; importable without torch, so the command line
lists them in its help and choices."""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

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
class Recommendation:
    """How a model is meant to draw: a sampler (this table's name), its steps and CFG scale.
    A consistency-distilled student records the ones it was distilled for in its metadata
    (``bksdm.recommended_*``, the sampler as A1111 names it), so the WebUI can show them."""

    sampler: str
    steps: int
    cfg_scale: float

    def metadata(self) -> Dict[str, str]:
        return dict(zip(RECOMMENDED, (A1111_NAMES.get(self.sampler, self.sampler),
                                      str(self.steps), "%g" % self.cfg_scale)))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Optional["Recommendation"]:
        """The recommendation a file's metadata records; None without one (or a damaged one)."""
        if not all(key in metadata for key in RECOMMENDED):
            return None
        name, steps, cfg_scale = (metadata[key] for key in RECOMMENDED)
        sampler = next((k for k, v in A1111_NAMES.items() if v == name), name)
        try:
            return cls(sampler, int(steps), float(cfg_scale))
        except ValueError:
            return None

    def describe(self) -> str:
        return "%s, %d steps, CFG %g" % (A1111_NAMES.get(self.sampler, self.sampler), self.steps,
                                         self.cfg_scale)
