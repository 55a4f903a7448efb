"""Append-only segment files on disk: the WAL (`wal` writes, `wal_reader` reads back,
`wal_recovery` repairs at open, `segment_format` frames and parses the bytes) and the data
directory's lock and file helpers (`datadir`).

Owns: bytes on disk. Imports: nothing of the agent (the bottom floor).
"""
