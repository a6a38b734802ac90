"""The web console: pages served by the API itself at ``/console/`` (``/`` redirects there)."""

from __future__ import annotations

from detrforge.api.console.pages import CONSOLE_PATH, CONTENT_SECURITY_POLICY, install_console

__all__ = ["CONSOLE_PATH", "CONTENT_SECURITY_POLICY", "install_console"]
