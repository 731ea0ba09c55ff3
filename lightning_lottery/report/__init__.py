"""Reports on lottery-ticket searches: tables (markdown, CSV) and figures from the callback's artifacts.

``write_report(dirs)`` or ``lightning-lottery-report DIR ...`` finds every ``history.json`` under the folders,
groups runs by experiment and by their settings other than the seed, and aggregates each branch (the ticket and
its controls) over seeds, with a 95% confidence interval.
"""

from lightning_lottery.report.build import write_report
from lightning_lottery.report.collect import ReportError, Run, collect_runs

__all__ = ["ReportError", "Run", "collect_runs", "write_report"]
