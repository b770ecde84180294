"""edgemeter agent package."""
