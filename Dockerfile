# docker-netpolicy-exporter
#
# Build:  docker build -t docker-netpolicy-exporter .
# Run:    see deploy/docker-compose.yml. The exporter must share the host's network namespace
#         (--network host) to read the host's firewall, needs CAP_NET_ADMIN and CAP_NET_RAW for
#         iptables-save, and the Docker socket read-only. It never writes to either.
#
# No registry here? Build a base with debootstrap and pass it in:
#   docker build --build-arg BASE_IMAGE=local/debian-python:bookworm .
# Behind a TLS-intercepting proxy, hand pip your CA bundle as a build secret:
#   DOCKER_BUILDKIT=1 docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# iptables carries both backends (iptables-nft-save, iptables-legacy-save); ebtables, ipset and
# nftables let the exporter read every table that can decide a bridged packet.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv iptables ebtables ipset nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/exporter \
 && /opt/exporter/bin/pip install --no-cache-dir . \
 && rm -rf /src

EXPOSE 9863
ENTRYPOINT ["/opt/exporter/bin/docker-netpolicy-exporter"]
CMD ["serve"]
