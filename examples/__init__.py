"""Runnable examples of user tasks and declarative spaces (not installed with rayzor)."""
