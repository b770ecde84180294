"""edgemeter tools package."""
