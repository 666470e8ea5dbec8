"""`ServeConfig`: where the HTTP service listens, how it batches and what it accepts (no web framework needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from densekit.errors import DensekitError


@dataclass
class ServeConfig:
    """Options of `densekit serve` / :func:`densekit.integrations.http.server.create_app`."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, reported at start)."})
    max_batch: int = field(
        default=64, metadata={"help": "Queries gathered from concurrent requests into one encoder call."}
    )
    max_wait_ms: float = field(
        default=2.0, metadata={"help": "How long a batch waits for more requests after its first (milliseconds)."}
    )
    max_k: int = field(default=1000, metadata={"help": "Largest k a request may ask for."})
    max_queries: int = field(default=1024, metadata={"help": "Most queries in one request."})
    threads: int | None = field(
        default=None,
        metadata={
            "help": "Torch threads for the query encoder (default: torch's; 1 on a machine busy with other work)."
        },
    )
    access_log: bool = field(default=False, metadata={"help": "Log every request (uvicorn's access log)."})

    def validate(self) -> None:
        """Check the values without importing any web framework."""
        if not 0 <= self.port <= 65535:
            raise DensekitError(f"--port must be 0..65535, got {self.port}")
        for name in ("max_batch", "max_k", "max_queries"):
            if getattr(self, name) <= 0:
                raise DensekitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.threads is not None and self.threads <= 0:
            raise DensekitError(f"--threads must be positive, got {self.threads}")
        if self.max_wait_ms < 0:
            raise DensekitError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
