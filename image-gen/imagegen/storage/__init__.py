"""TODO: the storage package."""
