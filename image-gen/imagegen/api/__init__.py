"""The HTTP API's blueprints, one per area: generate, edits, images, jobs, models, usage,
health, the web page and the OpenAPI description."""
