# dispatchd container image: a multi-stage build from source.
#
#   docker build -t dispatchd .
#   docker run -d --name dispatchd -p 4242:4242 -p 9242:9242 \
#     -v "$PWD/certs:/etc/dispatchd/certs:ro" -v dispatchd-state:/var/lib/dispatchd dispatchd
#
# Configuration: every flag --foo-bar can be given as DISPATCHD_FOO_BAR (flags win), so
# `docker run -e DISPATCHD_LOG_LEVEL=debug ...` or `docker run ... dispatchd --log-level debug`.
# Certificates are mounted at /etc/dispatchd/certs: server.pem, server.key, ca.pem.
# On machines without a Docker engine: scripts/container-test.sh (podman + buildah).

# ---------------------------------------------------------------------------------------------
# Build stage: the repository's own install and build scripts.
FROM docker.io/library/debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# Dependencies first, in their own layer: it stays cached while the sources change.
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY . .
# Stripped binaries into /staging; runtime-packages.txt lists the Debian packages holding the
# shared libraries they load (ldd -> dpkg -S), which the runtime stage installs and nothing more.
RUN scripts/build.sh --no-tests --no-debug-info --unity \
 && cmake --install build --prefix /staging --strip \
 && scripts/runtime-packages.sh /staging/bin/* > /staging/runtime-packages.txt \
 && echo "runtime packages: $(tr '\n' ' ' < /staging/runtime-packages.txt)"

# ---------------------------------------------------------------------------------------------
# Runtime stage: the binaries, their shared libraries, an unprivileged user.
FROM docker.io/library/debian:bookworm
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=build /staging/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -qq \
 && xargs -a /tmp/runtime-packages.txt \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
           /tmp/runtime-packages.txt
# Fixed ids so that volumes and mounted certificates can be given the right owner from outside.
RUN groupadd --system --gid 10001 dispatchd \
 && useradd --system --uid 10001 --gid dispatchd --home-dir /var/lib/dispatchd --no-create-home \
      --shell /usr/sbin/nologin dispatchd \
 && install -d -o dispatchd -g dispatchd -m 0750 /var/lib/dispatchd \
 && install -d -m 0755 /etc/dispatchd/certs
COPY --from=build /staging/bin/ /usr/local/bin/

ENV DISPATCHD_LISTEN=0.0.0.0:4242 \
    DISPATCHD_ADMIN_LISTEN=0.0.0.0:9242 \
    DISPATCHD_TLS_CERT=/etc/dispatchd/certs/server.pem \
    DISPATCHD_TLS_KEY=/etc/dispatchd/certs/server.key \
    DISPATCHD_TLS_CA=/etc/dispatchd/certs/ca.pem \
    DISPATCHD_STATE_DIR=/var/lib/dispatchd \
    DISPATCHD_LOG_FORMAT=json
# The state directory: keep it on a volume so that the cluster state outlives the container.
VOLUME ["/var/lib/dispatchd"]
WORKDIR /var/lib/dispatchd
# Numeric, so that runtimes can verify "non-root" (Kubernetes' runAsNonRoot) without /etc/passwd.
USER 10001:10001
# 4242: agents' gRPC (mutual TLS); 9242: admin HTTP (/metrics, /healthz, /readyz).
EXPOSE 4242 9242
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["dispatchctl", "--addr", "127.0.0.1:4242", "--tls-ca", "/etc/dispatchd/certs/ca.pem", "health"]
# SIGTERM (docker stop) drains: sessions end, GOAWAY, in-flight calls finish, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dispatchd"]
