"""Measurements over per-sample records: correctness with intervals, likelihood, diversity, reports.

    stats.py      accuracy, pass@k (unbiased estimator) with bootstrap intervals, majority vote, paired tests
    scoring.py    log-likelihood, confidence and self-certainty of completions under the base model
    diversity.py  distinct-n, self-BLEU, distinct answers, embedding diversity across a prompt's samples
    runs.py       read and check RUN_DIR/samples/*.jsonl; write scores back atomically
    metrics.py    every number of the report, from the records (metrics.json)
    plots.py      pass@k, accuracy vs compute, base-model histograms, diversity (PNG)
    report.py     report.md
    wandb_log.py  the same metrics, plots, histograms and sample tables in a wandb run

`sharpen analyze RUN_DIR` (experiments/analyze.py) wires these together.
"""

from .runs import InputError

__all__ = ["InputError"]
