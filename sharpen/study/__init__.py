"""A study: config, the sampling stage of one method instance, and the whole pipeline with resume.

    from sharpen.study import load_study_config, run_study
    metrics = run_study(load_study_config("testbed", ["num_problems=16"]))

    config.py     StudyConfig: one YAML file (a preset in sharpen/configs/ or a path), strict, with overrides
    sample.py     one sampling run: task problems x a registered method -> RUN_DIR/samples/<name>.jsonl
    pipeline.py   run_study: base model, GRPO, every method instance, analysis; checks before any work
"""

from .config import StudyConfig, load_study_config
from .pipeline import run_study
from .sample import SampleRunArgs, run as run_sampling

__all__ = ["SampleRunArgs", "StudyConfig", "load_study_config", "run_sampling", "run_study"]
