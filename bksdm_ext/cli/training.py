"""``bksdm distill``, ``synth`` and ``dreambooth``: the training runs.  Their options are
their configs' fields (train/*_config.py); the run folder is --out, --resume continues it."""
import argparse
from typing import Any, Dict

from ..train.distill_config import DistillConfig
from ..train.dreambooth_config import DreamBoothConfig
from ..train.synth_config import SynthConfig
from .flags import add_json, add_resolved_paths, add_settings, render_info, settings_from


def add(commands: Any) -> None:
    distill = commands.add_parser(
        "distill", help="retrain a BK-SDM student by knowledge distillation from its teacher, "
                        "or consistency-distil it to draw in a few steps",
        description="Task + output-KD + feature-KD distillation (the paper's recipe and "
                    "defaults), or with --objective lcm latent consistency distillation (the "
                    "LCM paper's; a student that draws in 2-8 steps with the LCM sampler). "
                    "The run folder gets events.jsonl, checkpoints/, samples/ and finally the "
                    "student as an A1111 .safetensors + .yaml (with --lora-rank also an "
                    "LCM-LoRA file for the student it started from). KD then LCM: a KD run, "
                    "then an LCM run with --init-student set to its result. Several GPUs: "
                    "accelerate launch --multi_gpu -m bksdm_ext distill ...")
    _add_run(distill, DistillConfig, run_distill)
    add_resolved_paths(distill, "data", "prompts")

    synth = commands.add_parser(
        "synth", help="let the teacher make distillation data: latents + text embeddings "
                      "for N prompts, no dataset needed",
        description="The teacher samples --count images (image i: prompt i, seed --seed + i) "
                    "and writes their latents and the prompts' text embeddings into a "
                    "training cache in --out, with prompts.txt and a decoded preview grid "
                    "(samples/preview.png). Use the folder as `bksdm distill --data OUT`. "
                    "--resume continues a stopped or killed run without duplicates or gaps.")
    _add_run(synth, SynthConfig, run_synth)

    dreambooth = commands.add_parser(
        "dreambooth", help="finetune a model (BK-SDM student or SD-v1/v2) on a few photos of "
                           "a subject",
        description="DreamBooth with prior preservation (the paper's recipe and defaults): "
                    "U-Net and text encoder finetuned jointly on the instance photos, class "
                    "images generated once by --class-model and reused. The run folder gets "
                    "events.jsonl, checkpoints/, samples/, the class images and finally the "
                    "finetuned model as an A1111 .safetensors + .yaml (with --lora also a "
                    "LoRA file for A1111's Lora extension).")
    _add_run(dreambooth, DreamBoothConfig, run_dreambooth)
    add_resolved_paths(dreambooth, "instance_dir")


def _add_run(parser: argparse.ArgumentParser, config: Any, run: Any) -> None:
    add_settings(parser, config)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_json(parser)
    parser.set_defaults(run=run, render=render_info)


def run_distill(args: argparse.Namespace) -> Dict[str, Any]:
    from ..train.distill import distill

    output = distill(settings_from(args, DistillConfig), resume=args.resume)
    result = {"output": str(output), "config": str(output.with_suffix(".yaml")), "run": args.out}
    if args.lora_rank:
        from ..train.lcm import lora_file

        result["lora"] = str(lora_file(output))
    return result


def run_synth(args: argparse.Namespace) -> Dict[str, Any]:
    from ..train.synth import synth, synth_summary

    run = synth(settings_from(args, SynthConfig), resume=args.resume)
    return dict(synth_summary(run), output=str(run))


def run_dreambooth(args: argparse.Namespace) -> Dict[str, Any]:
    from ..train.dreambooth import dreambooth

    output = dreambooth(settings_from(args, DreamBoothConfig), resume=args.resume)
    result = {"output": str(output), "config": str(output.with_suffix(".yaml")), "run": args.out}
    lora = output.with_name(output.stem + "-lora.safetensors")
    if args.lora and lora.is_file():
        result["lora"] = str(lora)
    return result
