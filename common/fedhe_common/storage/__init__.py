"""Durable local storage helpers."""
