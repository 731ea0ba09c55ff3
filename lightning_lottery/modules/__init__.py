"""LightningModules for the recipes; they know nothing of pruning."""
