"""What the ``lightning-lottery`` command adds around a search: config checks and one-line errors, the help text,
run-folder ownership and resume decisions, and the Lightning parts that keep a killed run's files whole."""
