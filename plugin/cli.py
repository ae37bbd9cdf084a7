"""Command line: ``swarmnet plugin`` (the managed plugin's entrypoint),
``swarmnet serve`` (the same app in the foreground, for development and tests) and
``swarmnet rotate-keys`` (new IPsec keys now, through a running plugin's socket)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.layout import StoreLayout
from plugin import settings as settings_mod
from plugin.settings import Settings, SettingsError
from plugin.unixhttp import UnixHTTPConnection

if TYPE_CHECKING:
    from plugin.metrics.http import MetricsServer
    from plugin.server import Loaded

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


def _serve(settings: Settings) -> int:
    """gunicorn: its arbiter binds the socket and forks one worker, which builds the app."""
    from ipam.config import IpamConfig
    from plugin import server

    # Checked here too, so that a bad pool stops the plugin with its message before the
    # fork rather than as a worker that fails to boot.
    try:
        IpamConfig.from_strings(settings.default_addr_pools, settings.default_addr_pool_mask_length)
    except ValueError as e:
        print(f"swarmnet: bad setting: {e}", file=sys.stderr)
        return 2
    return server.serve(
        lambda: _load(settings),
        settings.socket,
        access=settings.log_level == "debug",
        log_level=settings.log_level,
    )


def _relay(settings: Settings, listen: str, cert: str, key: str, client_ca: str) -> int:
    import asyncio

    from plugin.app import STORE_ROOT
    from plugin.relay import service as relay
    from plugin.store.etcd import EtcdKV, EtcdTLS

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"--listen: {listen[:100]!r} is not HOST:PORT")
    if not settings.etcd_endpoints:
        raise SettingsError("ETCD_ENDPOINTS: the relay needs the etcd it relays")
    if bool(cert) != bool(key) or (client_ca and not cert):
        raise SettingsError("--cert, --key: TLS needs both (and --client-ca needs them)")
    _setup_logging(settings.log_level)
    try:
        tls = relay.tls_context(cert, key, client_ca) if cert else None
    except (OSError, ValueError) as e:
        raise SettingsError(f"--cert, --key, --client-ca: {str(e)[:200]}") from None
    kv = EtcdKV(
        settings.etcd_endpoints,
        EtcdTLS(ca=settings.etcd_ca, cert=settings.etcd_cert, key=settings.etcd_key),
    )
    peers = StoreLayout(STORE_ROOT).peers
    asyncio.run(relay.run(kv, peers, host.strip("[]") or "0.0.0.0", int(port), tls))
    return 0


def _load(settings: Settings) -> Loaded:
    """In gunicorn's worker, after the fork, and again in each replacement worker: the
    app, built and reconciled, and what stops it."""
    from plugin import heap
    from plugin.app import create_app
    from plugin.server import Loaded

    app = create_app(settings)
    services = app.extensions["swarmnet"]
    trimmer = heap.start_trimming()
    exporter = _serve_metrics(settings, app)

    def close() -> None:
        if exporter is not None:
            exporter.close()  # first: the next worker can bind the port at once
        network = services.network
        # Background parts stop, then the control plane writes the withdrawals queued just
        # before the signal, so other nodes drop those endpoints now rather than when this
        # node's lease runs out.
        services.close()
        network.encryption.close()  # the IPsec keeper thread
        settle = getattr(network.kernel, "settle", None)
        if settle is not None:
            settle()  # the veth reaper finishes its batch; a next start reaps the rest
        if trimmer is not None:
            trimmer.stop()
        log.info("stopped: services closed")

    return Loaded(app, close)


def _serve_metrics(settings: Settings, app: Any) -> MetricsServer | None:
    """In the worker: /metrics on METRICS_ADDR (the arbiter never listens on it)."""
    if settings.metrics_addr is None:
        return None
    from plugin.metrics import EXTENSION
    from plugin.metrics.http import MetricsServer

    host, port = settings.metrics_addr
    exporter = MetricsServer(app.extensions[EXTENSION].registry, host, port)
    exporter.start()
    return exporter


def call_plugin(sock: Path, path: str, timeout: float = 60.0) -> tuple[int, Any]:
    """POST an empty body to the plugin's socket, as dockerd does; (status, JSON reply)."""
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Length": "2"})
        resp = conn.getresponse()
        text = resp.read()
    finally:
        conn.close()
    try:
        reply = json.loads(text) if text else {}
    except ValueError:
        reply = {"Err": text.decode("utf-8", "replace")}
    return resp.status, reply


def _ask(sock: Path, path: str, what: str) -> dict[str, Any] | None:
    """The plugin's reply to an admin call, or None after saying on stderr why not."""
    try:
        status, reply = call_plugin(sock, path)
    except OSError as e:
        print(f"swarmnet: cannot reach the plugin at {sock}: {e}", file=sys.stderr)
        return None
    if status != 200:
        print(f"swarmnet: {what} failed ({status}): {reply.get('Err', reply)}", file=sys.stderr)
        return None
    answer: dict[str, Any] = reply
    return answer


def _rotate_keys(sock: Path) -> int:
    reply = _ask(sock, "/Swarmnet.RotateKeys", "rotate-keys")
    if reply is None:
        return 1
    print(
        f"IPsec keys rotated: generation {reply['Previous']} -> {reply['Generation']}; "
        "every node switches within a few seconds"
    )
    return 0


def _status(sock: Path) -> int:
    reply = _ask(sock, "/Swarmnet.Status", "status")
    if reply is None:
        return 1
    print(f"scope {reply['Scope']}, VTEP {reply['VTEP'] or '(not known yet)'}")
    print(f"control plane: {reply['ControlPlane']}")
    header = ("NETWORK", "VNI", "MTU", "ENDPOINTS", "JOINED", "PEERS")
    print(
        f"{header[0]:<26} {header[1]:>8} {header[2]:>6} {header[3]:>9} {header[4]:>6} "
        f"{header[5]:>6}  FLAGS"
    )
    for n in reply["Networks"]:
        flags = ",".join(f for f in ("internal", "encrypted") if n[f.capitalize()])
        if n.get("Broken"):
            flags = ",".join(f for f in (flags, "BROKEN") if f)
        print(
            f"{n['NetworkID'][:25]:<26} {n['VNI']:>8} {n['MTU']:>6} {n['Endpoints']:>9} "
            f"{n['Joined']:>6} {n['RemotePeers']:>6}  {flags}"
        )
        if n.get("Broken"):
            print(f"  not rebuilt on this node, retrying: {n['Broken']}")
    # Which nodes can carry encrypted networks (each node's record, on its lease).
    print(f"{'NODE':<26} {'ENCRYPTED NETWORKS'}")
    for node in reply.get("Nodes", []):
        esp = node.get("ESP")
        can = "yes" if esp else ("unknown" if esp is None else f"no: {node.get('ESPDetail', '')}")
        print(f"{node['Node'][:25]:<26} {can}")
    _print_load_balancing(reply.get("LoadBalancing", {}))
    return 0


def _print_load_balancing(lb: dict[str, Any]) -> None:
    """Per network, each service VIP with its backends and weights; the collector's role."""
    state = lb.get("State", "unknown")
    line = f"load balancing: {state}"
    if lb.get("Reason"):
        line += f" ({lb['Reason']})"
    sandboxes = lb.get("Sandboxes")
    if sandboxes:
        line += (
            f"; sandboxes programmed {sandboxes['Programmed']}, waiting {sandboxes['Waiting']}, "
            f"given up {sandboxes['GivenUp']}"
        )
    print(line)
    collector = lb.get("Collector")
    if collector:
        print(
            f"  collector: {collector.get('Role', '?')}, {collector.get('Services', 0)} "
            f"service(s), {collector.get('Backends', 0)} backend(s)"
            + (f", last error: {collector['LastError']}" if collector.get("LastError") else "")
        )
    if lb.get("Store", "ok") != "ok":
        print(f"  service records: {lb['Store']}")
    if lb.get("LastError"):
        print(f"  last error: {lb['LastError']}")
    for net in lb.get("Networks", []):
        print(f"  network {net['ShortID']}: {net['SandboxesProgrammed']} sandbox(es) programmed")
        for svc in net["Services"]:
            backends = " ".join(f"{b['IP']}*{b['Weight']}" for b in svc["Backends"]) or "-"
            print(f"    {svc['Name'] or svc['ServiceID'][:12]:<20} {svc['VIP']:<16} {backends}")


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
    rotate = sub.add_parser(
        "rotate-keys",
        help="new IPsec keys for encrypted networks now (on any node; all nodes follow)",
    )
    rotate.add_argument(
        "--socket",
        type=Path,
        help="the plugin's socket (default SOCKET; a managed plugin's is "
        "/run/docker/plugins/<plugin id>/swarmnet.sock)",
    )
    status = sub.add_parser("status", help="networks, endpoints and peers of a running plugin")
    status.add_argument("--socket", type=Path, help="the plugin's socket (default SOCKET)")
    relay = sub.add_parser(
        "relay",
        help="one etcd watch fanned out to many nodes (nodes set PEER_RELAYS); etcd from "
        "ETCD_ENDPOINTS, ETCD_CA, ETCD_CERT, ETCD_KEY",
    )
    relay.add_argument("--listen", default="0.0.0.0:2381", help="HOST:PORT (default %(default)s)")
    relay.add_argument("--cert", default="", help="serve TLS with this certificate (PEM)")
    relay.add_argument("--key", default="", help="the certificate's private key (PEM)")
    relay.add_argument("--client-ca", default="", help="require node certificates signed by it")
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status(args.socket or Path(os.environ.get("SOCKET") or settings_mod.DEFAULT_SOCKET))
    if args.command == "rotate-keys":
        return _rotate_keys(
            args.socket or Path(os.environ.get("SOCKET") or settings_mod.DEFAULT_SOCKET)
        )

    try:
        settings = settings_mod.from_env(os.environ)
        if args.command == "relay":
            return _relay(settings, args.listen, args.cert, args.key, args.client_ca)
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
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
