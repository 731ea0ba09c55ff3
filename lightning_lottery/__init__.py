"""lightning_lottery: lottery-ticket search for PyTorch Lightning.

Add :class:`LotteryTicketCallback` to any ``Trainer``; one ``trainer.fit`` runs the whole search.
"""

__version__ = "0.1.0"

from lightning_lottery.callback import LotteryTicketCallback
from lightning_lottery.export import ExportSummary, export_pruned
from lightning_lottery.ticket import Ticket, TicketError
from lightning_lottery.transfer import TicketSequence

__all__ = [
    "ExportSummary",
    "LotteryTicketCallback",
    "Ticket",
    "TicketError",
    "TicketSequence",
    "__version__",
    "export_pruned",
]
