# Root filesystem of the swarmnet-overlay managed plugin.
#
# Nothing here reaches a package index: `make plugin` builds the project and its
# dependencies as wheels on the host (build/wheels) and passes that directory as
# the build context. BASE defaults to the official slim image; where no registry is
# reachable `make plugin` makes an equivalent one locally (scripts/base-image.sh),
# with nftables already in it. Only the official image needs apt for nftables.
#
# Two stages: the first installs everything; the second keeps only what the daemon
# runs: Python, its standard library and the venv, `nft` and `nsenter`, and the
# shared libraries these load (found with ldd), with no shell, apt, dpkg database,
# perl, docs or locales. `docker plugin create` gzips the whole rootfs, which costs
# minutes under emulation (kernel-lab), so every megabyte left out counts.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build

COPY wheels/ /tmp/wheels/

# One venv at /opt/swarmnet; config.json's entrypoint is /opt/swarmnet/bin/swarmnet.
# pip and setuptools only serve the install, so they leave with the wheels, and so
# do parts of the standard library a daemon never imports. Byte code is kept only
# for the modules the plugin imports: the import line writes it.
RUN set -eux; \
    command -v nft >/dev/null || { apt-get update; \
        apt-get install -y --no-install-recommends nftables; }; \
    python3 -m venv /opt/swarmnet; \
    /opt/swarmnet/bin/pip install --no-index --find-links /tmp/wheels --no-compile \
        --disable-pip-version-check 'swarmnet-overlay[etcd]'; \
    /opt/swarmnet/bin/pip uninstall -y --disable-pip-version-check pip setuptools; \
    rm -rf /tmp/wheels /root/.cache; \
    site=$(/opt/swarmnet/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf /opt/swarmnet/bin/activate* /opt/swarmnet/bin/Activate.ps1 "$site/pbr/tests" \
           "$site/pyroute2/test_platform"; \
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])'); \
    rm -rf "$stdlib/ensurepip" "$stdlib/idlelib" "$stdlib/lib2to3" "$stdlib/pydoc_data" \
           "$stdlib/tkinter" "$stdlib/turtledemo" "$stdlib/unittest/test" "$stdlib/test" \
           "$stdlib/venv" "$stdlib"/config-3* "$stdlib"/lib-dynload/_test* \
           "$stdlib"/lib-dynload/_ctypes_test* "$stdlib"/lib-dynload/xx* \
           "$stdlib"/lib-dynload/_xx* "$stdlib"/lib-dynload/_curses* \
           "$stdlib"/lib-dynload/readline* "$stdlib"/lib-dynload/_dbm* \
           "$stdlib"/lib-dynload/nis* "$stdlib"/lib-dynload/ossaudiodev* \
           "$stdlib"/lib-dynload/audioop* "$stdlib"/lib-dynload/_crypt*; \
    find / -xdev -depth -name __pycache__ -type d -exec rm -rf {} +; \
    /opt/swarmnet/bin/python -c 'import plugin.cli, plugin.app, plugin.server, plugin.heap, plugin.metrics, plugin.metrics.http, gunicorn.app.base, gunicorn.workers.gthread, setproctitle, pyroute2, etcd3gw, docker, prometheus_client'; \
    \
    slim=/slim; \
    mkdir -p "$slim/usr/bin" "$slim/usr/sbin" "$slim/usr/lib/x86_64-linux-gnu" \
             "$slim/usr/lib64" "$slim/usr/lib/locale" "$slim/etc/ssl/certs" "$slim/opt" \
             "$slim/dev" "$slim/proc" "$slim/sys" "$slim/run" "$slim/root" \
             "$slim/var/lib/swarmnet"; \
    install -d -m 1777 "$slim/tmp"; \
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$slim/$d"; done; \
    cp -a /opt/swarmnet "$slim/opt/"; \
    mkdir -p "$slim$(dirname "$stdlib")"; cp -a "$stdlib" "$slim$(dirname "$stdlib")/"; \
    py3=$(command -v python3); py=$(readlink -f "$py3"); \
    mkdir -p "$slim$(dirname "$py3")"; cp -a "$py" "$py3" "$slim$(dirname "$py3")/"; \
    cp -a /usr/sbin/nft "$slim/usr/sbin/"; \
    cp -a /usr/bin/nsenter "$slim/usr/bin/"; \
    [ ! -d /usr/lib/locale/C.utf8 ] || cp -a /usr/lib/locale/C.utf8 "$slim/usr/lib/locale/"; \
    for f in passwd group nsswitch.conf ld.so.cache protocols services hosts resolv.conf \
             hostname ssl/openssl.cnf ssl/certs/ca-certificates.crt; do \
        [ ! -e "/etc/$f" ] || cp -L "/etc/$f" "$slim/etc/$f"; \
    done; \
    : > "$slim/etc/hosts"; : > "$slim/etc/resolv.conf"; : > "$slim/etc/hostname"; \
    [ ! -e /usr/lib/ssl ] || cp -a /usr/lib/ssl "$slim/usr/lib/"; \
    find "$py" /usr/sbin/nft /usr/bin/nsenter "$slim/opt" "$slim$stdlib" \
         -type f \( -perm -u+x -o -name '*.so*' \) -print0 \
      | xargs -0 ldd 2>/dev/null \
      | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' \
      | sort -u > /tmp/libs; \
    while read -r lib; do \
        dest="$slim$(readlink -f "$(dirname "$lib")")/$(basename "$lib")"; \
        mkdir -p "$(dirname "$dest")"; cp -L "$lib" "$dest"; \
    done < /tmp/libs; \
    rm /tmp/libs

FROM scratch
COPY --from=build /slim/ /
ENV PATH=/opt/swarmnet/bin:/usr/sbin:/usr/bin PYTHONUNBUFFERED=1
# The kept tree must still run the plugin and its tools (no shell here: exec form).
RUN ["/usr/sbin/nft", "--version"]
RUN ["/usr/bin/nsenter", "--version"]
RUN ["/opt/swarmnet/bin/python", "-c", "import plugin.cli, plugin.app, plugin.server, plugin.heap, plugin.metrics, plugin.metrics.http, gunicorn.app.base, gunicorn.workers.gthread, setproctitle, pyroute2, etcd3gw, docker, prometheus_client, sqlite3, ssl, ctypes; print('imports ok')"]
ENTRYPOINT ["/opt/swarmnet/bin/swarmnet", "plugin"]
