"""rayzor cluster package."""
