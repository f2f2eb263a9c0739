"""fedhe_server package."""
