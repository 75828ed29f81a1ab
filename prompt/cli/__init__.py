"""The ``prompt`` command line."""
