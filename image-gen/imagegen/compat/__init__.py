"""TODO: the compat package."""
