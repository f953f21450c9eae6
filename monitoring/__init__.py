"""Drift monitoring over the decision log (``nba drift``).

``monitoring.drift`` is the plain-Python part (window checks, sampling, the summary and its
thresholds); ``monitoring.evidently_report`` is the one adapter over Evidently (the report, its
per-column drift scores and the workspace). Nothing here imports ``serving``.
"""
