"""The hook's settings, read once from the environment (`settings`): the variables' table
(`env_vars`), the readers of their values (`env_parsing`), audit levels and presets (`levels`),
what `register()` reads first (`start_policy`), and the parsers they use (`client_address`:
trusted proxies; `identity_file`: API-key identities), and the GPUs the container was given
(`gpu_identity`, from its environment), and the key the processes of one vLLM launch share
(`instance_key`).

Imports: nothing of the hooks (the bottom floor).
"""
