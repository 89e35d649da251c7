"""How good an image is, as numbers: agreement of a student's image with the teacher's
(PSNR, SSIM), text-image agreement (CLIP score) and, for `bksdm eval`, FID against a
folder of reference images.

Pure scoring, shared by whoever generates images: the Compare tab and `bksdm eval`
(`measure`), and evaluation during training (`train`).  It sits just above `model` (for the
offline CLIP tokenizer) and may import only `model` and `errors`, never `train`, `jobs`,
`measure`, `webui` or A1111.
"""
