"""The one merge of GRPO settings: trl.TrlParser over (GrpoRunArgs, trl.GRPOConfig, trl.ModelConfig).

    parser = SettingsParser(prog="grpo")                        # defaults: the run defaults over TRL's
    parser.set_defaults_with_config(max_steps=40, lora=True)    # a mapping (YAML file, study section)
    (settings,) = parser.parse_args_into_dataclasses([])        # GrpoSettings

`sharpen grpo` (sharpen.cli.grpo) parses its command line with this class and TrlParser's own
`parse_args_and_config` (YAML file, then flags); a study's grpo section goes through the same
parser with no flags (settings_from_mapping). A library module holds a parser here because
the parser is the merge: HfArgumentParser gives some fields other defaults than their
dataclasses do (GRPOConfig's include_num_input_tokens_seen 'no' becomes False, debug '' becomes
None) and converts YAML strings ('1e-3', 'true') by each field's type; a run's identity
records the result, so the command line and a study must merge alike.

    python -m pytest -q tests/test_grpo.py -k "settings or flags or relaunch"
"""

from __future__ import annotations

import re

from trl import GRPOConfig, ModelConfig, TrlParser

from sharpen.errors import UsageError

from .grpo import default_grpo_args, default_model_args
from .settings import GrpoRunArgs, GrpoSettings


class SettingsParser(TrlParser):
    """TrlParser whose defaults are the run defaults and whose result is GrpoSettings.

    YAML keys may be spelt with dashes, as flags may; a key that is no field is a UsageError
    naming `source` (what the mapping came from). Errors are UsageErrors naming the key
    (`grpo.max_steps: invalid int value: 'ten'`); the command's parser prints them instead.
    """

    source = "the GRPO settings"

    def __init__(self, **kwargs):
        super().__init__((GrpoRunArgs, GRPOConfig, ModelConfig), **kwargs)
        self.set_defaults_with_config(**default_grpo_args(), **default_model_args())

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        unknown = super().set_defaults_with_config(**{k.replace("-", "_"): v for k, v in kwargs.items()})
        if unknown:  # refused here, before any value is parsed: TrlParser would report them after
            raise UsageError(f"{self.source} has unknown options: {', '.join(unknown[::2])} "
                             f"(see sharpen grpo --help)")
        return unknown

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        """(GrpoSettings,), plus the arguments left over with return_remaining_strings (else they are an error)."""
        namespace, rest = self.parse_known_args(args)
        if rest and not return_remaining_strings:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        settings = GrpoSettings.from_values(vars(namespace))
        return (settings, rest) if return_remaining_strings else (settings,)

    def error(self, message):  # argparse's "argument --max_steps/--max-steps: invalid int value: 'ten'"
        raise UsageError(re.sub(r"^argument --(\w+)(/--[\w-]+)?: ", rf"{self.prog}.\1: ", message))
