"""`sharpen testbed`: build (or reuse) the testbed model and print its calibration.

    sharpen testbed                           # ~/.cache/sharpen/testbed-0-v2 (SHARPEN_CACHE moves it)
    sharpen testbed --output-dir runs/testbed --seed 1

Prints the checkpoint directory (usable as `sharpen sample --model DIR --task testbed`) and the
calibration table. The calibration is saved beside the model (calibration.json) and reused
when asked again with the same settings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sharpen.errors import UsageError
from sharpen.runs.files import write_text_atomic
from sharpen.testbed.calibrate import calibrate, format_calibration
from sharpen.testbed.train import build_testbed, load_info

from .args import ArgumentParser


@dataclass
class TestbedRunConfig:
    output_dir: str | None = field(
        default=None, metadata={"help": "Checkpoint directory (default: <cache>/testbed-<seed>-v<version>)."})
    seed: int = field(default=0, metadata={"help": "Seed of the corpus and the model's initialisation (>= 0)."})
    num_problems: int = field(default=64, metadata={"help": "Test problems the calibration samples (>= 3)."})
    num_samples: int = field(default=16, metadata={"help": "Samples per problem and method in the calibration (>= 1)."})

    def __post_init__(self):
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.num_problems < 3:
            raise UsageError(f"--num-problems must be >= 3 (plain, trap and twice in turn), got {self.num_problems}")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1, got {self.num_samples}")


def make_parser():
    return ArgumentParser(TestbedRunConfig, prog="sharpen testbed",
                          description="Build (or reuse) the testbed model and print its calibration.")


def cached_calibration(path: Path, num_problems: int, num_samples: int, progress: bool = True) -> dict:
    """calibrate(path), reusing calibration.json when it was made with the same settings and files."""
    files = load_info(path)["files"]
    settings = {"num_problems": num_problems, "num_samples": num_samples, "files": files}
    saved = path / "calibration.json"
    if saved.is_file():
        try:
            data = json.loads(saved.read_text())
            if data.get("settings") == settings:
                return data["figures"]
        except ValueError:
            pass  # unreadable: measure again
    if progress:
        print("testbed: calibrating ...", file=sys.stderr)
    figures = calibrate(path, num_problems=num_problems, num_samples=num_samples)
    try:
        write_text_atomic(saved, json.dumps({"settings": settings, "figures": figures}, indent=2))
    except OSError:
        pass  # a read-only checkpoint is still usable; just not cached
    return figures


def main(argv: list[str] | None = None) -> int:
    (config,) = make_parser().parse_args_into_dataclasses(argv)
    path = build_testbed(config.output_dir, seed=config.seed)
    info = load_info(path)
    print(f"testbed model: {path} (seed {info['seed']}, trained in {info['train']['wall_seconds']:.0f} s, "
          f"final loss {info['train']['final_loss']:.3f})")
    print(format_calibration(cached_calibration(path, config.num_problems, config.num_samples)))
    return 0
