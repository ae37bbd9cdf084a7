"""Command line for the lab: ``python -m testbed.multihost up|down|status|exec|env``
(``python -m tests.lab`` and ``make lab-up``/``lab-down`` are the same)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from testbed.multihost.lab import DEFAULT_SUBNET, DEFAULT_WORKDIR, Lab, LabError
from testbed.multihost.names import discover_workdir, iter_labs


def _lab(args: argparse.Namespace) -> Lab:
    """The lab described by the state file, or (for `down`) one rebuilt from the arguments."""
    workdir = Path(args.workdir)
    try:
        return Lab.from_state(workdir)
    except LabError:
        if args.command in ("down",):
            return Lab(1, workdir, name=args.name)
        raise


def _node(lab: Lab, spec: str) -> str:
    if spec == "fabric":
        return lab.fabric_netns
    index = int(spec.removeprefix("node"))
    return lab.node(index).netns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.multihost", description=__doc__)
    parser.add_argument("--workdir", default=os.environ.get("SNLAB_WORKDIR", str(DEFAULT_WORKDIR)),
                        help="lab directory (default: $SNLAB_WORKDIR or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create the lab: netns, bridge, etcd, dockerds, swarm")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--managers", type=int, default=1)
    up.add_argument("--name", default="", help="tell concurrent labs apart (default: none)")
    up.add_argument("--subnet", default=str(DEFAULT_SUBNET))
    up.add_argument("--plugin", type=Path, help="also install this managed plugin build dir")
    up.add_argument("--plugin-name", default="swarmnet-overlay:latest")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="plugin setting (repeatable)")

    down = sub.add_parser("down", help="remove everything of the lab (state file not needed)")
    down.add_argument("--name", default="", help="lab name when there is no state file")
    down.add_argument("--all", action="store_true", help="every snlab- lab on this machine")

    sub.add_parser("status", help="print the lab's nodes, daemons and etcd as JSON")

    ex = sub.add_parser("exec", help="run CMD in a node's netns (docker there means that node)")
    ex.add_argument("node", help="1, node1, ... or fabric")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)

    env = sub.add_parser("env", help="print `export DOCKER_HOST=...` for a node")
    env.add_argument("node", type=int)

    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        lab = Lab(args.nodes, Path(args.workdir), name=args.name, managers=args.managers,
                  subnet=args.subnet)
        lab.up()
        print(f"lab up in {lab.timings['up']:.1f}s: {len(lab.nodes)} nodes, etcd {lab.etcd_url}")
        if args.plugin:
            settings = dict(kv.split("=", 1) for kv in args.set)
            t = time.monotonic()
            lab.install_plugin(args.plugin, args.plugin_name, settings)
            print(f"plugin {args.plugin_name} enabled on every node in {time.monotonic() - t:.1f}s")
        for node in lab.nodes:
            print(f"  node{node.index}  {node.address}  {node.netns}  DOCKER_HOST=unix://{node.socket}")
        return 0
    if args.command == "down":
        if args.all:
            for name in list(iter_labs()):
                workdir = discover_workdir(name) or Path(args.workdir)
                Lab(1, workdir, name=name).down()
                print(f"removed lab {name or '(default)'} (workdir {workdir})")
        lab = _lab(args)
        lab.down()
        left = {k: v for k, v in lab.leftovers().items() if v}
        print(f"lab down in {lab.timings['down']:.1f}s" + (f"; LEFT OVER: {left}" if left else ""))
        return 1 if left else 0
    lab = _lab(args)
    if args.command == "status":
        print(json.dumps(lab.status(), indent=2))
        return 0
    if args.command == "env":
        node = lab.node(args.node)
        print(f"export DOCKER_HOST=unix://{node.socket}")
        print("alias docker=/usr/bin/docker")
        return 0
    if args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise LabError("exec: give a command after --")
        netns = _node(lab, args.node)
        env = lab.node(1).env if args.node == "fabric" else lab.node(int(
            args.node.removeprefix("node"))).env
        os.execvpe("ip", ["ip", "netns", "exec", netns, *cmd], env)
    return 2


if __name__ == "__main__":
    sys.exit(main())
