"""Operator calls on the plugin socket, next to the protocol: ``/Swarmnet.*``.

A managed plugin cannot be exec'd into, so these are HTTP routes on the same
unix socket dockerd uses; ``swarmnet rotate-keys`` calls them, and so does

    curl --unix-socket /run/docker/plugins/<plugin id>/swarmnet.sock -X POST \\
        http://plugin/Swarmnet.RotateKeys

Replies never carry key material: generations are numbers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from plugin.routes import services

bp = Blueprint("admin", __name__)


@bp.post("/Swarmnet.RotateKeys")
def rotate_keys() -> dict[str, Any]:
    """A new IPsec key generation; every node switches to it with no packet lost."""
    rotation = services().network.rotate_keys()
    return {"Previous": rotation.previous, "Generation": rotation.current}


@bp.post("/Swarmnet.Status")
def status() -> dict[str, Any]:
    """Networks with their VNI, MTU, endpoint and remote-peer counts; the control plane's state."""
    s = services()
    return {**s.network.status(), "LoadBalancing": dict(s.lb_status())}
