"""TODO: the upstream package."""
