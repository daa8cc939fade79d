"""The report: multi-seed study, invariance study, statistics and REPORT.md with plots."""
