"""`comfyui-api`: read the environment, log JSON, serve until told to stop."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError, load_settings
from .logs import configure_logging


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging("info")
        logging.getLogger("comfyui_api").critical(str(exc))
        sys.exit(1)
    configure_logging(settings.log_level)
    from .server import serve  # after logging is configured, so import-time logs are JSON too

    try:
        code = serve(settings)
    except ConfigError as exc:
        logging.getLogger("comfyui_api").critical(str(exc))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
