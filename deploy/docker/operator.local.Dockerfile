# The operator image of deploy/docker/operator.Dockerfile, built without a registry: the
# Debian base made with debootstrap instead of distroless, and the mailtls binary built on
# the host (Debian 12, same glibc) copied in; the same non-root user. scripts/test-images.sh
# builds it for the pod tests:
#   scripts/test-images.sh build target/debug/mailtls
# The context directory holds the binary only, named mailtls.
ARG BASE=localhost/mailtls-test-base:bookworm
FROM ${BASE}
COPY mailtls /usr/local/bin/mailtls
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mailtls"]
CMD ["run"]
