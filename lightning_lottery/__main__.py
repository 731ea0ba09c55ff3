"""``python -m lightning_lottery``: the same as the ``lightning-lottery`` command."""

from lightning_lottery.app import main

main()
