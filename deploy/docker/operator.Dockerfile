# The operator image: the static-enough mailtls binary on distroless, as a non-root user.
# Build from the repository root: docker build -f deploy/docker/operator.Dockerfile -t mailtls/operator .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mailtls

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mailtls /usr/local/bin/mailtls
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mailtls"]
CMD ["run"]
