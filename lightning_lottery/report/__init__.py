"""Reports on lottery-ticket searches: tables (markdown, CSV) and figures from the callback's artifacts.

``write_report(dirs)`` or ``lightning-lottery-report DIR ...`` finds every ``history.json`` under the folders,
groups runs by experiment and variant, and aggregates over seeds.
"""

from lightning_lottery.report.build import write_report
from lightning_lottery.report.collect import ReportError, Run, collect_runs

__all__ = ["ReportError", "Run", "collect_runs", "write_report"]
