"""TODO: the observability package."""
