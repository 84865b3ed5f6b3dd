"""Measurements over per-sample records: correctness with intervals, likelihood, diversity, reports.

    from sharpen.analysis import AnalysisConfig, analyze
    metrics = analyze("runs/demo", AnalysisConfig(bootstrap=500))   # or `sharpen analyze runs/demo`

    pipeline.py   analyze(): scoring, metrics, report, plots and wandb in one call; AnalysisConfig
    runs.py       read and check RUN_DIR/samples/<name>.jsonl, configs, sessions and stored scores
    scoring.py    log-likelihood, confidence and self-certainty under the base model -> RUN_DIR/scores/<name>.jsonl
    stats.py      accuracy, pass@k (unbiased estimator) with bootstrap intervals, majority vote, paired tests
    diversity.py  distinct-n, self-BLEU, distinct answers, embedding diversity across a prompt's samples
    metrics.py    every number of the report, from the records and scores (metrics.json)
    outcomes.py      one method's records as per-problem arrays (correct, answers, forward tokens)
    large_k.py       coverage at the largest shared n; the k at which base overtakes a method
    boundary.py      problems solved by only one side of a pair at the shared k (the reasoning boundary)
    equal_compute.py majority vote / pass@k of base and low_temp at the k that costs what a sampler costs
    entropy.py       token and answer entropy of each method's own samples; support retention vs base
    target.py        a weighted method's (power_is) estimate of p^alpha, ESS; did each sampler reach p^alpha?
    mixing.py        convergence diagnostics: power_mh's two starts (permutation tests, R-hat), SMC's ESS
                     and log Z spread, SPS's look-ahead against completion length
    plots.py      pass@k, accuracy vs compute, base-model histograms, diversity (PNG)
    report.py     report.md
    wandb_log.py  one wandb run per method instance (same keys, settings as config) and the analysis run
    square.py     the sharpening square: methods by {no verifier, verifier} x {no training, training}
    seeds.py      a study over replicate seeds: per-seed and pooled values, two-level bootstrap intervals

Sample files are read, never written; scores are derived data beside them.
"""

from .pipeline import AnalysisConfig, analyze, default_base_model, format_summary
from .runs import InputError
from .seeds import analyze_seeds, format_seeds_summary

__all__ = ["AnalysisConfig", "InputError", "analyze", "analyze_seeds", "default_base_model", "format_seeds_summary",
           "format_summary"]
