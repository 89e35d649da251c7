"""BK-SDM for Stable Diffusion WebUI: block-removed, knowledge-distilled Stable Diffusion students."""

__version__ = "0.1.0"
