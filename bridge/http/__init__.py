"""The bridge's HTTP front doors over the job core (``bridge/jobs``): see ``app.py``."""
