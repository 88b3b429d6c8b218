"""`comfyui-api`: read the environment, launch ComfyUI, log JSON, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from .comfy.process import ComfyProcess, child_environment
from .config import Settings, load_settings
from .errors import ConfigError, StartupError
from .logs import configure_logging

logger = logging.getLogger("comfyui_api")


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging("info")
        logger.critical(str(exc))
        sys.exit(1)
    configure_logging(settings.log_level)
    if settings.base:
        logger.info(
            "BASE has no effect: samplers are read from ComfyUI's /object_info, so no ai-dock environment is needed",
            extra={"base": settings.base},
        )
    sys.exit(asyncio.run(_run(settings)))


async def _run(settings: Settings) -> int:
    process = ComfyProcess(
        settings.comfy_command,
        child_environment(dict(os.environ), address=settings.direct_address, port=settings.comfyui_port_host),
    )
    if settings.launches_comfy and settings.manifest is None and settings.manifest_json is None:
        # ComfyUI takes seconds to boot: launched first, it boots while this server imports and builds itself
        # (a manifest's installs must come before it, so with one the lifecycle launches it).
        try:
            await process.launch()
        except StartupError as exc:
            logger.critical(str(exc))
            return 1
    from .server import serve  # the heavy imports, after logging is configured so that their logs are JSON too

    try:
        return await serve(settings, process)
    except ConfigError as exc:
        logger.critical(str(exc))
        return 1


if __name__ == "__main__":
    main()
