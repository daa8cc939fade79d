"""python -m report: build reports/REPORT.md (see report/build.py)."""

from lenet_edge.report.build import main
from lenet_edge.runtime.cli import run

raise SystemExit(run(main))
