"""The testbed: a synthetic reasoning task and a tiny base model, trained locally in a minute or two.

    from sharpen.testbed import build_testbed, calibrate, format_calibration
    path = build_testbed(seed=0)             # checkpoint dir: sampling.load_model(str(path))
    print(format_calibration(calibrate(path)))
    task = get_task("testbed")               # its problems, prompts and grader

    corpus.py      the task family, the noisy-teacher corpus and its exact (trap, twice) probabilities
    train.py       tokenizer, tiny Llama, training, the cached checkpoint (build_testbed)
    calibrate.py   pass@1 / pass@k / log-likelihood / trap / twice figures measured on the built model
    cli.py         `sharpen testbed`
"""

from .calibrate import calibrate, format_calibration, trap_preference, twice_preference
from .corpus import exact_figures
from .train import TrainConfig, build_testbed, default_dir, load_info

__all__ = ["build_testbed", "calibrate", "format_calibration", "trap_preference", "twice_preference", "exact_figures",
           "TrainConfig", "default_dir", "load_info"]
