"""edgemeter cloud package."""
