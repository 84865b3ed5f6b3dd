"""`sharpen study`: run a whole study from a YAML config (a preset name or a file), with key=value overrides.

    sharpen study --config testbed                       # the built-in default (sharpen/configs/testbed.yaml)
    sharpen study --config smollm2_arithmetic num_problems=16 power_mh.mcmc_steps=2
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen study --config qwen_math500

Parses the command line, loads the config (sharpen.study.config) and calls sharpen.study.run_study;
the stages and their resume rules are described in sharpen/study/pipeline.py.
"""

from __future__ import annotations

import argparse

from sharpen.study.config import load_study_config
from sharpen.study.pipeline import run_study

from .args import PlainArgumentParser


def make_parser():
    parser = PlainArgumentParser(prog="sharpen study", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="testbed",
                        help="Study YAML file, or a preset name from sharpen/configs/ (default: testbed).")
    parser.add_argument("--output-dir", help="Run directory (default: the config's output_dir, else runs/<name>).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete an output directory that holds a study with other settings (only one that sharpen wrote).")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value, e.g. power_mh.mcmc_steps=4.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_study_config(args.config, overrides)
    run_study(config, overwrite=args.overwrite)
    return 0
