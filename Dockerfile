# Root filesystem of the swarmnet-overlay managed plugin.
#
# Nothing here reaches a package index: `make plugin` builds the project and its
# dependencies as wheels on the host (build/wheels) and passes that directory as
# the build context. BASE defaults to the official slim image; where no registry is
# reachable `make plugin` makes an equivalent one locally (scripts/base-image.sh).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

COPY wheels/ /tmp/wheels/

# One venv at /opt/swarmnet; config.json's entrypoint is /opt/swarmnet/bin/swarmnet.
# pip and setuptools only serve the install, so they leave with the wheels, and so
# do parts of the standard library a daemon never imports. Byte code is kept only
# for the modules the plugin imports: the last line imports them and writes it.
RUN set -eux; \
    python3 -m venv /opt/swarmnet; \
    /opt/swarmnet/bin/pip install --no-index --find-links /tmp/wheels --no-compile \
        --disable-pip-version-check 'swarmnet-overlay[etcd]'; \
    /opt/swarmnet/bin/pip uninstall -y --disable-pip-version-check pip setuptools; \
    rm -rf /tmp/wheels /root/.cache; \
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])'); \
    rm -rf "$stdlib/ensurepip" "$stdlib/idlelib" "$stdlib/lib2to3" "$stdlib/pydoc_data" \
           "$stdlib/tkinter" "$stdlib/turtledemo" "$stdlib/unittest/test" "$stdlib/test"; \
    find / -xdev -depth -name __pycache__ -type d -exec rm -rf {} +; \
    rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/cache/apt/* \
           /var/lib/apt/lists/* /var/log/*; \
    /opt/swarmnet/bin/python -c 'import plugin.cli, plugin.app, plugin.server, plugin.heap, waitress, pyroute2, etcd3gw'

ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["/opt/swarmnet/bin/swarmnet", "plugin"]
