"""Load-test harness: replay an observing night through prompt and judge the 60 s budget.

``prompt replay`` is the command; :func:`loadtest.replay.run_replay` the library entry point.
"""
