"""The agent's answers to people and machines: the token table and roles (`tokens`), who may
call what and what is admitted, for both transports (`gate`, with the parameters' documented
maximums in `limits`), its gRPC interceptor (`auth_interceptor`), the listeners' TLS (`tls`),
one implementation of every query/control call (`operations`, its errors in `errors`, its
sealed page tokens in `page_tokens`) behind two transports (gRPC `query`, HTTP `http_api`, its
routes and parameters defined once in `http_routes` and `http_params` and documented from them
as OpenAPI 3.1 by `openapi`, answers' schemas from the contract by `proto_schema`), the
meta-audit sink (`meta_audit`, refusal floods aggregated by `refusal_records`), the Prometheus
collectors (`collectors`), the HTTP port serving them and the probes (`http_endpoint`) and
`/readyz` (`readiness`).

Imports: any room below it; never `cli`.
"""
