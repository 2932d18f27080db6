"""Reading /metrics as Prometheus does: parse the text, pick one value."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gunicorn_server import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, parsed by the Prometheus client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return parse(response.get_data(as_text=True))


def scrape_service(service: Service) -> Samples:
    status, headers, body = service.get("/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE
    return parse(body.decode())
