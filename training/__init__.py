"""Model training: the multi-action uplift estimator (``training.uplift``) and the value model
that turns estimated effects and action costs into expected incremental net value
(``training.value``). Modules here may import from ``features`` but never from ``serving``, and
none of them does work at import time.
"""
