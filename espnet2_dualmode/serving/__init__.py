"""Serving one dual-mode model over HTTP and WebSocket (streaming and full-context
recognition from one process), with a browser page; see :mod:`.protocol`."""
