"""Everything that changes a student's weights: knowledge distillation (task, output-KD
and feature-KD losses), DreamBooth with its class images and LoRA, both plugged into one
training skeleton (the run, its loop and cadence, the checkpointed run state, sample grids
and evaluation), the latent/caption cache and the captioned-image datasets it reads, the
shared noising and optimizer, and teacher-made training data (prompt sources and
synthesis), with each run's settings as torch-free dataclasses the CLI builds its help
from.  It may import `model` and `jobs` (the run folder and event file every trainer
writes), never `measure`, `webui` or A1111.
"""
