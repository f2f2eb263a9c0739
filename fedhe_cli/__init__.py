"""fedhe_cli package."""
