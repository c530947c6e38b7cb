"""Training, losses and evaluation (torch lives here; evaluate.py works on numpy only)."""
