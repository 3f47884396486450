"""The soak tier: bounded load and fault runs against real servers in a child process.

Not collected by the default test run (no ``test_*`` files here); run it with
``scripts/soak`` (``scripts/soak --help`` for the sizes). See docs/reliability.md.
"""
