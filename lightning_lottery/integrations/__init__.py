"""Optional integrations with experiment trackers."""
