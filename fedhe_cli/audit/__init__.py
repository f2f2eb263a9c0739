"""``fedhe audit``: what an encryption mask protects against gradient inversion (DLG)."""
