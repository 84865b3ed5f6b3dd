"""`sharpen analyze RUN_DIR`: metrics, plots, report.md and a wandb run from a run's per-sample records.

    sharpen analyze runs/demo                                  # base model from samples/<name>.config.json
    sharpen analyze runs/demo --base-model smollm2-135m --wandb off
    sharpen analyze runs/demo --wandb online --wandb-project sharpen --wandb-group study-1
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen analyze runs/demo

Parses the flags into analysis.AnalysisConfig and sharpen.runs.tracking.WandbConfig, calls
sharpen.analyze (which scores into RUN_DIR/scores/, never modifying samples/*.jsonl) and
prints a summary. The wandb flags are WandbConfig's fields with a `wandb` prefix and its defaults
(--wandb auto: $WANDB_MODE when set, else offline).
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from sharpen.analysis import AnalysisConfig, analyze, format_summary
from sharpen.runs.processes import current_shard
from sharpen.runs.tracking import WandbConfig

from .args import ArgumentParser


def _wandb_flag(name: str) -> str:
    return "wandb" if name == "mode" else f"wandb_{name}"


def make_parser():
    parser = ArgumentParser(AnalysisConfig, prog="sharpen analyze",
                            description="Metrics, plots, report.md and a wandb run from a run directory's records.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="Run directory holding samples/<name>.jsonl.")
    for f in fields(WandbConfig):  # --wandb, --wandb-project, ...: WandbConfig's own fields and help
        dest = _wandb_flag(f.name)
        default = None if f.default is MISSING else f.default  # mode: tracking.DEFAULT_MODE
        names = dict.fromkeys([f"--{dest}", f"--{dest.replace('_', '-')}"])
        parser.add_argument(*names, dest=dest, default=default, metavar=f.name.upper(),
                            help=f.metadata["help"])
    parser.add_argument("--wandb_name", "--wandb-name", dest="wandb_name", default=None,
                        help="Name of the analysis wandb run; None means <study>-analysis (the study.json name, else the run directory name).")
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = make_parser().parse_args(argv)
    config = AnalysisConfig(**{f.name: getattr(namespace, f.name) for f in fields(AnalysisConfig)})
    wandb = WandbConfig(**{f.name: getattr(namespace, _wandb_flag(f.name)) for f in fields(WandbConfig)})
    shard = current_shard()  # under `accelerate launch`, scoring is shared by the processes
    metrics = analyze(namespace.run_dir, config, wandb=wandb, wandb_name=namespace.wandb_name, shard=shard,
                      progress=shard.is_main)
    if metrics is not None:
        print(format_summary(metrics))
    return 0
