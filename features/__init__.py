"""Raw tables to feature tables: the raw-data contract, point-in-time features, Feast adapter.

Everything here is a pure function of its inputs with an explicit ``as_of``; nothing reads the
clock. Heavy libraries (Feast) are imported lazily inside the adapter, never at import time.
"""
