# The relay image: Debian's Postfix (lmdb, cdb and pcre maps) plus mailtls for the
# relay-agent sidecar. /usr/share/mailtls/postfix keeps the image's configuration: the
# relay-init container copies it into the pod's live config directory. Build from the
# repository root:
#   docker build -f deploy/docker/relay.Dockerfile -t mailtls/relay .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mailtls

FROM debian:bookworm-slim
RUN echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postfix postfix-lmdb postfix-cdb postfix-pcre ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf \
 && postconf -e "inet_interfaces = all" "mydestination =" "maillog_file = /dev/stdout" \
      "smtp_tls_CApath = /etc/ssl/certs" "smtp_tls_security_level = may" \
 && mkdir -p /etc/postfix/mailtls /usr/share/mailtls \
 && cp -a /etc/postfix /usr/share/mailtls/postfix
COPY --from=build /src/target/release/mailtls /usr/local/bin/mailtls
EXPOSE 25
ENTRYPOINT ["/usr/local/bin/mailtls"]
