"""TODO: the jobs package."""
