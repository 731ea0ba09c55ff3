"""Hydra configs of the lightning-lottery app (a package so Hydra finds them when installed)."""
