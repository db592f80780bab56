"""The application: ops with auth and limits, streams with takeover and resume, presence."""

from rt.service.app import Service, open_service
from rt.service.streams import StreamEnd, StreamSession

__all__ = ["Service", "StreamEnd", "StreamSession", "open_service"]
