"""Typed YAML configuration (pydantic models) for jobs and the three services."""
