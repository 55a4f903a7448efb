"""The agent's answers to people and machines: the token table and roles (`tokens`), who may
call what for both transports (`gate`) and its gRPC interceptor (`auth_interceptor`), the
listeners' TLS (`tls`), one implementation of every query/control call (`operations`) behind
two transports (gRPC `query`, HTTP `http_api`), the meta-audit sink (`meta_audit`), the
Prometheus collectors (`collectors`), the HTTP port serving them and the probes
(`http_endpoint`) and `/readyz` (`readiness`).

Imports: any room below it; never `cli`.
"""
