"""Imported by tests/cli/test_quiet.py to test `_quiet.AfterImport`."""

VALUE = 1
