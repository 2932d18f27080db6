"""TODO: the catalog package."""
