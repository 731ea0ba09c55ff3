"""Plain torch networks for the recipes; they know nothing of pruning."""
