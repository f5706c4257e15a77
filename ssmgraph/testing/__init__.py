"""Tools for testing models and blocks: independent reference implementations."""
