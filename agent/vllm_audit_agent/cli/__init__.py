"""The `vllm-audit` command line: argument parsing and commands (`main`) and the query client
(`client`).

The top floor: it may import any room; no room imports it.
"""
