"""Prometheus metrics: one registry per dispatcher, children of hot-path series made once."""

from prompt.metrics.dispatcher import DispatcherMetrics

__all__ = ["DispatcherMetrics"]
