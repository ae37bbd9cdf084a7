"""Command line: ``swarmnet plugin`` (the managed plugin's entrypoint) and
``swarmnet serve`` (the same app in the foreground, for development and tests)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from plugin import settings as settings_mod
from plugin.settings import Settings, SettingsError

log = logging.getLogger("swarmnet")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pyroute2 logs every netlink message at debug: far too much, even for debugging.
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def _run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from plugin.app import create_app

    settings.socket.parent.mkdir(parents=True, exist_ok=True)
    if settings.socket.exists() or settings.socket.is_symlink():
        settings.socket.unlink()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            cfg: dict[str, Any] = {
                "bind": f"unix:{settings.socket}",
                # One process: locks and caches are shared by every request.
                # Threads give concurrency; the kernel work is serialised per network.
                "workers": 1,
                "worker_class": "gthread",
                "threads": 16,
                # Kernel and store calls can be slow on a loaded host; Docker waits too.
                "timeout": 120,
                # SIGTERM must not cost Docker its 10 s kill timeout.
                "graceful_timeout": 3,
                "loglevel": settings.log_level,
                "accesslog": "-" if settings.log_level == "debug" else None,
                "errorlog": "-",
                "umask": 0o077,
                # gunicorn 23+ opens a control socket under $HOME; the plugin has no use for it.
                "control_socket_disable": True,
            }
            for key, value in cfg.items():
                if key in self.cfg.settings:  # control_socket_disable is new in gunicorn 23
                    self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in the worker, after the fork.
            return create_app(settings)

    Server().run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarmnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugin", help="run as the managed plugin (settings from the environment)")
    serve = sub.add_parser("serve", help="run the plugin app in the foreground on a socket")
    serve.add_argument("--socket", type=Path, required=True)
    serve.add_argument("--state-dir", type=Path, required=True)
    serve.add_argument(
        "--run-dir", type=Path, help="where network namespaces are bind-mounted (default RUN_DIR)"
    )
    args = parser.parse_args(argv)

    try:
        settings = settings_mod.from_env(os.environ)
        if args.command == "serve":
            settings = dataclasses.replace(
                settings,
                socket=args.socket,
                state_dir=args.state_dir,
                run_dir=args.run_dir or settings.run_dir,
            )
    except SettingsError as e:
        print(f"swarmnet: bad setting: {e}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    log.info(
        "swarmnet-overlay starting: socket=%s state=%s scope=%s vxlan_port=%d vni_range=%s",
        settings.socket,
        settings.state_dir,
        settings.driver.scope,
        settings.driver.vxlan_port,
        "-".join(map(str, settings.driver.vni_range)),
    )
    _run_gunicorn(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
