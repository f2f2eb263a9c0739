"""fedhe_keyauth package."""
