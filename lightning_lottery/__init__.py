"""lightning_lottery: lottery-ticket search for PyTorch Lightning.

Add :class:`LotteryTicketCallback` to any ``Trainer``; one ``trainer.fit`` runs the whole search.

The names below are imported on first use, so that ``lightning-lottery --help`` and other commands that only
read configs start without importing torch and Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LotteryTicketCallback": "lightning_lottery.callback",
    "ExportSummary": "lightning_lottery.export",
    "Ticket": "lightning_lottery.ticket",
    "TicketError": "lightning_lottery.ticket",
    "export_pruned": "lightning_lottery.export",
    "TicketSequence": "lightning_lottery.transfer",
}

__all__ = [
    "ExportSummary",
    "LotteryTicketCallback",
    "Ticket",
    "TicketError",
    "TicketSequence",
    "__version__",
    "export_pruned",
]

if TYPE_CHECKING:
    from lightning_lottery.callback import LotteryTicketCallback
    from lightning_lottery.export import ExportSummary, export_pruned
    from lightning_lottery.ticket import Ticket, TicketError
    from lightning_lottery.transfer import TicketSequence


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_lottery' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
