"""Prefect tasks, one module per pipeline stage. Each wraps the stage's `run` from the stillroom library,
adds what the Prefect UI shows (an artifact with the stage's summary) and the stage's retry policy."""
