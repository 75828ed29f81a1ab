"""prompt: always-on, low-latency prompt processing for wide-field survey telescopes."""

__version__ = "0.1.0"
