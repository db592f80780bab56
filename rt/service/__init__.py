"""The application: ops with auth and limits, streams with takeover and resume, presence."""

from rt.service.hooks import Hooks
from rt.service.service import Service, open_service
from rt.service.streams import StreamEnd, StreamSession

__all__ = ["Hooks", "Service", "StreamEnd", "StreamSession", "open_service"]
