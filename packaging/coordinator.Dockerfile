# The musketeer-coordinator image: the static binary and nothing else.
#
# Built by packaging/build-images from dist/ (packaging/build makes it):
#   docker run -d --name coordinator --hostname coordinator -p 7443:7443 \
#       -e MUSKETEER_PUBLIC_URL=https://coordinator:7443 -v musketeer-data:/data musketeer-coordinator
#   docker exec coordinator /musketeer-coordinator token create
# The public URL's host goes into the server certificate: give the name
# agents reach the coordinator by (its name on the Docker network, or a DNS name).
FROM scratch
ARG MUSKETEER_PUBLIC_URL=https://coordinator:7443
COPY musketeer-coordinator /musketeer-coordinator
COPY --chown=65532:65532 data /data
USER 65532:65532
ENV MUSKETEER_DATA_DIR=/data \
    MUSKETEER_LISTEN=0.0.0.0:7443 \
    MUSKETEER_PUBLIC_URL=${MUSKETEER_PUBLIC_URL}
VOLUME /data
EXPOSE 7443
ENTRYPOINT ["/musketeer-coordinator"]
CMD ["serve"]
