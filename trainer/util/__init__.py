"""Plumbing every layer may use: user-facing errors, atomic writes, input limits, progress callbacks and CSV-safe text.

Imports nothing else from the package.
"""
