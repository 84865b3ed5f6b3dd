"""Measurements over per-sample records: correctness with intervals, likelihood, diversity, reports."""
