"""rt: a self-hosted realtime server on Trio.

The curated public API: the configuration and the error type. Everything
else is reached through the `rt` command (rt.cli) or the web app factory
(rt.web.app.create_app).
"""

from rt.config import Config
from rt.core.errors import RtError

__all__ = ["Config", "RtError", "__version__"]
__version__ = "0.1.0"
