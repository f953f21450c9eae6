"""The decision policy: guardrails as data and arbitration, as pure code.

``serving.guardrails`` loads and evaluates the guardrail rules (``serving/guardrails.yaml``);
``serving.policy`` turns expected values and guardrail verdicts into a decision. Both are shared
by the HTTP decision service and offline scoring (``nba score``), import no web framework and do
no I/O at import time.
"""
