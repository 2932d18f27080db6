"""TODO: the api package."""
