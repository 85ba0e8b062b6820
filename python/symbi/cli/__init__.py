"""The ``symbi`` command line. It uses only the public API."""
