"""Runnable examples of header-first-stream; each is a package (``python -m examples.NAME``)."""
