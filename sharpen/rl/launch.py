"""Running GRPO again under `accelerate launch`: the accelerate config, the command, the processes it starts.

    config = check_accelerate_config("cpu_2proc")        # a file, or a packaged config's name
    accelerate_launch("cpu_2proc", ["--model", M, "--task", T, "--output-dir", D])   # waits for the children

The children run `python -m sharpen grpo CHILD_ARGS` with LAUNCHED_ENV set: they train, and
never relaunch themselves.

    python -m pytest -q tests/test_grpo.py -k "accelerate or relaunch"
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from sharpen.configs import find_config
from sharpen.errors import UsageError

LAUNCHED_ENV = "SHARPEN_GRPO_LAUNCHED"


def is_launched() -> bool:
    """Whether this process is one that a relaunch started."""
    return bool(os.environ.get(LAUNCHED_ENV))


def accelerate_config_path(name: str) -> Path:
    """An accelerate config file: `name` if it exists, else the packaged config of that name (cpu_2proc, ...)."""
    return find_config(name, "accelerate")


def check_accelerate_config(name: str):
    """The accelerate config `name` (accelerate's own ClusterConfig); UsageError if it is missing or does not parse."""
    from accelerate.commands.config.config_args import load_config_from_file  # accelerate: start-up time

    path = accelerate_config_path(name)
    try:
        return load_config_from_file(str(path))
    except Exception as err:  # yaml, TypeError and ValueError all mean "not a valid accelerate config"
        raise UsageError(f"accelerate config '{name}' is not valid ({' '.join(str(err).split())[:200]})") from None


def uses_fsdp(name: str) -> bool:
    from accelerate.utils import DistributedType

    return check_accelerate_config(name).distributed_type == DistributedType.FSDP


def planned_processes(accelerate_config: str | None) -> int:
    """How many processes will train: the accelerate config's (before a relaunch), or this launch's."""
    if accelerate_config and not is_launched():
        return max(1, int(check_accelerate_config(accelerate_config).num_processes or 1))
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(config_file: str, child_args: list[str], port: int | None = None) -> list[str]:
    """`accelerate launch` of `sharpen grpo CHILD_ARGS`: the child re-runs the same merge of the same settings."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return command + ["-m", "sharpen", "grpo", *child_args]


def accelerate_launch(name: str, child_args: list[str]) -> None:
    """Run `sharpen grpo CHILD_ARGS` under `accelerate launch --config_file` the config `name`; wait for it."""
    config = check_accelerate_config(name)
    processes = max(1, int(config.num_processes or 1))
    # Two runs at once must not share a port.
    port = _free_port() if processes > 1 and not getattr(config, "main_process_port", None) else None
    command = launch_command(str(accelerate_config_path(name)), list(child_args), port)
    done = subprocess.run(command, env=os.environ | {LAUNCHED_ENV: "1"})
    if done.returncode != 0:
        raise UsageError(f"accelerate launch with {name} failed (exit status {done.returncode}); "
                         f"see the output above")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
