"""Internal mechanisms used across the package: each exists once here."""
