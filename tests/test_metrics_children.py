"""`metrics.labelled`: one child per label set, counting in the registry like `labels()`."""

from __future__ import annotations

from prometheus_client import REGISTRY

from webhook_worker import metrics


def test_a_label_set_is_looked_up_once_and_counts_like_labels() -> None:
    labels = {"outcome": "accepted", "reason": "labelled_test"}
    before = REGISTRY.get_sample_value("webhook_requests_total", labels) or 0.0
    child = metrics.labelled(metrics.REQUESTS, "accepted", "labelled_test")
    assert metrics.labelled(metrics.REQUESTS, "accepted", "labelled_test") is child
    assert metrics.labelled(metrics.REQUESTS, "accepted", "other_reason") is not child
    child.inc()
    metrics.REQUESTS.labels("accepted", "labelled_test").inc()
    assert REGISTRY.get_sample_value("webhook_requests_total", labels) == before + 2
