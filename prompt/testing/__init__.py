"""The harness shared by ``prompt dev``, the benchmarks, the load-test replay and the tests.

``tasks`` builds the instruments' task files, ``processes`` starts dispatchers and pilots as
real child processes, ``traffic`` sends the observatory's events and collects completions,
``fixtures`` is the pytest plugin (``pytest_plugins = ["prompt.testing.fixtures"]``).
"""
