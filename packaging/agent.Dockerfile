# The musketeer agent image: the static binary and nothing else.
#
# Built by packaging/build-images from dist/ (packaging/build makes it):
#   packaging/build-images
#   docker run -d -e MUSKETEER_COORDINATOR=https://coord:7443 -e MUSKETEER_TOKEN=MSKTKN-1-... musketeer
# An operator can bake the coordinator and a join token into the image, so
# that volunteers need no flags at all:
#   packaging/build-images --coordinator https://coord.example:7443 --token MSKTKN-1-...
#   docker run -d musketeer
FROM scratch
ARG MUSKETEER_COORDINATOR=
ARG MUSKETEER_TOKEN=
COPY musketeer /musketeer
# An empty directory owned by the agent's user: a fresh volume on /data
# takes its owner from here, so the unprivileged agent can save its credential.
COPY --chown=65532:65532 data /data
USER 65532:65532
# Configured by environment alone. Self-update is off: an image is replaced
# by pulling a newer image, not by rewriting its binary. The volunteer's
# controls: MUSKETEER_SCHEDULE="mon-fri 18:00-08:00,sat-sun" (empty: always;
# the image has no time zone, so UTC unless /etc/localtime is mounted),
# MUSKETEER_PAUSE_ON_BATTERY=true (reads /sys/class/power_supply, which
# containers see), and `docker exec NAME /musketeer pause 1h|resume|status`.
ENV MUSKETEER_STATE_DIR=/data \
    MUSKETEER_AUTO_UPDATE=0 \
    MUSKETEER_SCHEDULE= \
    MUSKETEER_PAUSE_ON_BATTERY=false \
    MUSKETEER_COORDINATOR=${MUSKETEER_COORDINATOR} \
    MUSKETEER_TOKEN=${MUSKETEER_TOKEN}
VOLUME /data
ENTRYPOINT ["/musketeer"]
CMD ["run"]
