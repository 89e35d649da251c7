"""What a checkpoint is and how it is read, written and turned into a student.

The architecture spec (`arch`) and everything derived from it: LDM <-> diffusers key maps,
the student's yaml and LDM U-Net class, detection of what a file is, safetensors and
restricted-pickle reading, streaming conversion, diffusers import, `info`, building
diffusers/transformers modules from a file, the offline tokenizer and text encoder, and
the generation pipeline with its sampler table; and how user image files are opened (a
fixed list of decoders, sizes from the header), which every layer above shares.  The
bottom layer: it imports only `bksdm_ext.errors`, never `train`, `jobs`, `measure`,
`webui` or A1111's `modules`.
"""
