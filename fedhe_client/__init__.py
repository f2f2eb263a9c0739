"""fedhe_client package."""
