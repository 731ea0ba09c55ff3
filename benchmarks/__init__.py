"""Speed and memory benchmarks of lightning_lottery; run ``python -m benchmarks --help``."""
