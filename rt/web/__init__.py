"""HTTP and WebSocket serving for rt: Quart on hypercorn's trio worker."""
