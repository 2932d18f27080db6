"""What the service tells its operator: logs, Prometheus metrics, Gunicorn's refusals as JSON."""
