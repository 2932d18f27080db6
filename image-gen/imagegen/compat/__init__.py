"""The OpenAI-compatible face: /v1 routes with OpenAI's request, answer and error shapes."""
