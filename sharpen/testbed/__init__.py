"""The testbed: a synthetic reasoning task and a tiny base model, trained locally in a minute or two.

    from sharpen.testbed import build_testbed, calibrate, format_calibration
    path = build_testbed(seed=0)             # checkpoint dir: sharpen.load_model(str(path))
    print(format_calibration(calibrate(path)))
    task = sharpen.get_task("testbed")       # its problems, prompts and grader (sharpen/tasks/testbed.py)

    train.py       tokenizer, tiny Llama, training, the cached checkpoint (build_testbed)
    calibrate.py   pass@1 / pass@k / log-likelihood / trap / twice figures measured on the built model
    kinds.py       pass@k per method and problem kind of a run's records (`sharpen kinds RUN_DIR`)

The task family, its noisy-teacher corpus and exact probabilities are in sharpen/tasks/testbed_corpus.py
(the task layer needs them; the model built here sits above the tasks and the analysis).
`sharpen testbed` (sharpen/cli/testbed.py) builds the model and prints its calibration.
"""

from sharpen.tasks.testbed_corpus import exact_figures

from .calibrate import calibrate, format_calibration, trap_preference, twice_preference
from .train import TrainConfig, build_testbed, default_dir, load_info

__all__ = ["build_testbed", "calibrate", "format_calibration", "trap_preference", "twice_preference", "exact_figures",
           "TrainConfig", "default_dir", "load_info"]
