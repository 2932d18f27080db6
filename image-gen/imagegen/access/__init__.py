"""TODO: the access package."""
