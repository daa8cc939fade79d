"""python -m report: build reports/REPORT.md (see report/build.py)."""

from report.build import main
from runtime.cli import run

raise SystemExit(run(main))
