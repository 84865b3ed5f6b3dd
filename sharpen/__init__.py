"""sharpen: head-to-head studies of RL (GRPO) against training-free power sampling on one base model.

The notebook API, one import:

    import sharpen
    model, tokenizer = sharpen.load_model("smollm2-135m")            # a hub id, a local dir, or a built-in
    prompt_ids = [tokenizer("What is 3 + 4?")["input_ids"]]
    plain = sharpen.sample(model, prompt_ids, temperature=1.0, max_new_tokens=32, seeds=[0])
    power = sharpen.power_sample(model, prompt_ids, sharpen.PowerSamplingConfig(alpha=4.0, max_new_tokens=32),
                                 seeds=[0])
    sharpen.get_method("power_smc").settings                         # every registered method and its settings
    task = sharpen.get_task("basic_arithmetic")                       # problems, prompts, the grader
    metrics = sharpen.run_study(sharpen.load_study_config("testbed", ["num_problems=8"]))
    metrics = sharpen.analyze("runs/testbed")                         # a run directory in, its metrics out

Names are loaded on first use, so `import sharpen` (and the `sharpen` command's start) stays cheap.
The subpackages, bottom layer first (each imports only those before it):

    errors.py   UsageError: a user's mistake, one line and exit status 2 on the command line
    runs/       files, locks, per-sample records, processes, provenance, wandb tracking
    sampling/   the base model as a distribution: loading, plain and low-temperature sampling,
                the power samplers (MH, SMC, SPS), importance sampling of p^alpha (power_is),
                the method registry and its plug-ins
    testbed/    the synthetic task and its tiny locally trained model
    tasks/      data + prompt + grader per task, the code sandbox, user files; task plug-ins
    analysis/   scores under the base model, pass@k, diversity, statistics, plots, report, wandb
    rl/         GRPO through TRL: rewards from a task's grader, rollouts, the run directory, launch
    study/      a study: config, the sampling stage, the whole pipeline with resume
    cli/        the `sharpen` commands: parse, check, call the library
    configs/    study presets, GRPO configs, accelerate configs (package data, found by name)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access: PEP 562)
_EXPORTS = {
    "UsageError": "sharpen.errors",
    "load_model": "sharpen.sampling.models",
    "ModelLoadError": "sharpen.sampling.models",
    "derive_seed": "sharpen.sampling.draw",
    "SampleResult": "sharpen.sampling.generate",
    "sample": "sharpen.sampling.generate",
    "power_sample": "sharpen.sampling.power",
    "PowerSamplingConfig": "sharpen.sampling.power",
    "smc_sample": "sharpen.sampling.smc",
    "SMCConfig": "sharpen.sampling.smc",
    "sps_sample": "sharpen.sampling.sps",
    "SPSConfig": "sharpen.sampling.sps",
    "importance_sample": "sharpen.sampling.importance",
    "ImportanceSamplingConfig": "sharpen.sampling.importance",
    "BaseSamplingConfig": "sharpen.sampling.methods",
    "LowTempConfig": "sharpen.sampling.methods",
    "Method": "sharpen.sampling.methods",
    "register_method": "sharpen.sampling.methods",
    "get_method": "sharpen.sampling.methods",
    "registered_methods": "sharpen.sampling.methods",
    "Task": "sharpen.tasks.base",
    "build_testbed": "sharpen.testbed.train",
    "get_task": "sharpen.tasks",
    "register_task": "sharpen.tasks",
    "registered_tasks": "sharpen.tasks",
    "AnalysisConfig": "sharpen.analysis.pipeline",
    "analyze": "sharpen.analysis.pipeline",
    "StudyConfig": "sharpen.study.config",
    "load_study_config": "sharpen.study.config",
    "run_study": "sharpen.study.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sharpen' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
