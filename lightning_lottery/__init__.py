"""lightning_lottery: lottery-ticket search for PyTorch Lightning.

Add :class:`LotteryTicketCallback` to any ``Trainer``; one ``trainer.fit`` runs the whole search.
"""

from lightning_lottery.callback import LotteryTicketCallback

__version__ = "0.1.0"

__all__ = ["LotteryTicketCallback", "__version__"]
