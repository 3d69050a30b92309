# Redis for compose.yaml and stack.yaml, built on this machine from Debian's
# `redis-server` package: no registry is needed. packaging/redis-image
# gathers the host's redis-server and the shared libraries it loads into
# rootfs/, so the image is FROM scratch like the others:
#   apt-get install redis-server && packaging/redis-image
FROM scratch
COPY rootfs/ /
# A fresh volume on /data takes its owner from here.
COPY --chown=999:999 data /data
USER 999:999
WORKDIR /data
VOLUME /data
ENTRYPOINT ["/usr/bin/redis-server"]
# Reachable from the stack's other containers (the network is the stack's
# own); the append-only file on the volume keeps every accepted job.
CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--appendonly", "yes", "--dir", "/data"]
