"""The agent's answers to people and machines: bearer-token auth and its interceptor (`auth`),
one implementation of every query/control call (`operations`) behind two transports (gRPC
`query`, HTTP `http_api`), the meta-audit sink (`meta_audit`), Prometheus exposition and the
HTTP endpoint (`metrics`) and `/readyz` (`readiness`).

Imports: any room below it; never `cli`.
"""
