"""The preset choice the Convert and Distill tabs offer: display label <-> preset name."""

PRESET_LABELS = {"Base": "base", "Small": "small", "Tiny": "tiny", "Mid-stage removed": "mid-removed"}
LABEL_OF = {v: k for k, v in PRESET_LABELS.items()}
