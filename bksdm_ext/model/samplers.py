"""The samplers every generating part offers, named as A1111 users know them; importable
without torch, so the command line lists them in its help and choices."""
from typing import Any, Dict, Tuple

# sampler name -> (diffusers scheduler class name, extra config)
SAMPLERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}
DEFAULT_SAMPLER = "dpmpp_2m_karras"  # DPM++ 2M Karras: the paper's Orin setup, A1111's default
