"""Append-only segment files on disk: the WAL format, its recovery and reader (`wal`), and the
data directory's lock and file helpers (`datadir`).

Owns: bytes on disk. Imports: nothing of the agent (the bottom floor).
"""
