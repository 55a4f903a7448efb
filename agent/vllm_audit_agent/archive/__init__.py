"""The WORM archive: sealed record-log segments, each with the records up to the checkpoint that
covers it, uploaded to S3-compatible object storage under Object Lock (compliance mode), and
read back by `verify` and `export`.

Owns: the archive's layout (layout.py), the S3 client (store.py), the uploader task with its
retries, dead letters and counters (uploader.py), reading an archive back (reader.py) and the
metrics (metrics.py). Imports the record log (records) and the disk (storage), never the API.
"""
