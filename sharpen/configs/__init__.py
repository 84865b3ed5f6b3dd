"""Configs shipped with sharpen (package data), found by name or by path: one rule for all three kinds.

    from sharpen.configs import find_config, config_names
    find_config("testbed", "study")                  # .../sharpen/configs/testbed.yaml
    find_config("cpu_2proc", "accelerate")           # .../sharpen/configs/accelerate/cpu_2proc.yaml
    find_config("runs/my_study.yaml", "study")       # a file that exists is taken as it is

    study        study presets (sharpen/configs/*.yaml): `sharpen study --config NAME`
    grpo         GRPO settings files (sharpen/configs/grpo_*.yaml): `sharpen grpo --config`, a study's grpo.config
    accelerate   accelerate configs (sharpen/configs/accelerate/*.yaml): `--accelerate-config`, accelerate launch

A name may carry `.yaml` and a folder (`accelerate_configs/cpu.yaml` finds the packaged cpu.yaml):
only the file name is looked up among the packaged configs, after an existing file of that path.

>>> find_config("cpu", "accelerate").name
'cpu.yaml'
>>> "testbed" in config_names("study") and "grpo_gpu" in config_names("grpo")
True
>>> find_config("nope", "accelerate")
Traceback (most recent call last):
...
sharpen.errors.UsageError: accelerate config 'nope' does not exist: give a YAML file or a preset name (cpu, cpu_2proc, deepspeed_zero2, deepspeed_zero3, fsdp2, multi_gpu, single_gpu)
"""

from __future__ import annotations

from pathlib import Path

from sharpen.errors import UsageError

CONFIG_DIR = Path(__file__).parent
KINDS = ("study", "grpo", "accelerate")


def config_names(kind: str) -> list[str]:
    """The packaged configs of `kind`, by name (file stem), sorted."""
    if kind == "accelerate":
        files = (CONFIG_DIR / "accelerate").glob("*.yaml")
    elif kind == "grpo":
        files = CONFIG_DIR.glob("grpo_*.yaml")
    elif kind == "study":
        files = (p for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("grpo_"))
    else:
        raise ValueError(f"unknown config kind '{kind}': kinds are {', '.join(KINDS)}")
    return sorted(p.stem for p in files)


def find_config(name: str, kind: str, what: str | None = None) -> Path:
    """An existing file `name`, else the packaged config of `kind` with that file name (.yaml optional).

    UsageError otherwise, naming the setting (`what`, default "<kind> config") and the packaged names.
    """
    given = Path(str(name)).expanduser()
    if given.is_file():
        return given
    stem = given.name[:-5] if given.name.endswith(".yaml") else given.name
    if stem in config_names(kind):
        folder = CONFIG_DIR / "accelerate" if kind == "accelerate" else CONFIG_DIR
        return folder / f"{stem}.yaml"
    raise UsageError(f"{what or kind + ' config'} '{name}' does not exist: give a YAML file or a preset name "
                     f"({', '.join(config_names(kind))})")
