"""Stand-in for Forge's ``backend`` package (see ../README.md)."""
