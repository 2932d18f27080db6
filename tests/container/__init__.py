"""Container tests: the image, Compose and Swarm files, proven on a real Docker engine."""
