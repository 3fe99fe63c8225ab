# docker-netpolicy-exporter
#
# Build:  DOCKER_BUILDKIT=1 docker build -t docker-netpolicy-exporter .
# Run:    see README.md (Deployment) and deploy/README.md for the tested `docker run` line, the
#         one-shot check and the compose file: host network, Docker socket read-only, read-only
#         root filesystem, NET_ADMIN + NET_RAW only. It never writes to the firewall or to Docker.
#
# No registry here? Build a base with debootstrap and pass it in (deploy/README.md has the recipe):
#   docker build --build-arg BASE_IMAGE=local/debian-python:bookworm .
# Behind a TLS-intercepting proxy, hand pip your CA bundle as a build secret (and build with
# --network host if the daemon has no bridge):
#   DOCKER_BUILDKIT=1 docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
#
# Two stages so that the image holds no pip, setuptools, wheel cache or apt lists: the venv is
# built in the first and copied alone into the second. Both stages install the same Debian
# python3, so the venv's interpreter link (/usr/bin/python3) resolves in the final image.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
# gcc and libc headers: python-iptables compiles a small C helper (libxtwrapper) from its sdist.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/exporter \
 && /opt/exporter/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/exporter/bin/pip uninstall -y --disable-pip-version-check pip setuptools \
 && /opt/exporter/bin/python -m compileall -q /opt/exporter

FROM ${BASE_IMAGE}
# iptables carries both backends (iptables-nft-save, iptables-legacy-save) and the libraries
# python-iptables loads; ebtables, ipset and nftables let the exporter read every table that can
# decide a bridged packet.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 iptables ebtables ipset nftables \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/exporter /opt/exporter

# Runs as root (uid 0) on purpose: reading netfilter needs CAP_NET_ADMIN (+ CAP_NET_RAW for the
# legacy tables) in the host's network namespace, and the Docker socket is root's. Grant only
# those two capabilities at `docker run` (--cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW).
EXPOSE 9863
# The image has no curl: the venv's Python asks /healthz (200 while checks keep running).
# Override HEALTHCHECK_URL when serving on another address.
ENV HEALTHCHECK_URL=http://127.0.0.1:9863/healthz
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/exporter/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["/opt/exporter/bin/docker-netpolicy-exporter"]
CMD ["serve"]
