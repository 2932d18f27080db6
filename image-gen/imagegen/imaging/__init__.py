"""TODO: the imaging package."""
