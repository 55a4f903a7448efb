"""`ApiError`: a call refused with a reason, for both transports (gRPC status; HTTP maps it)."""

from __future__ import annotations

import grpc


class ApiError(Exception):
    """A call refused with a reason: the gRPC status code and a message naming what was
    wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
