"""The Feast repository template (package data: ``nba init`` copies it into a workspace).

Not imported by Feast: ``.feastignore`` lists this file; the declarations are in
``definitions.py``.
"""
