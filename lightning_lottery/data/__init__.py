"""LightningDataModules for the recipes; plain data code that knows nothing of pruning."""
