# The relay image: Debian's Postfix (lmdb, cdb and pcre maps) plus mailtls for the
# relay-agent sidecar. /usr/share/mailtls/postfix keeps the image's configuration: the
# relay-init container copies it into the pod's live config directory. Two changes to
# Debian's configuration: no service runs chrooted (`postfix start-fg` does not copy
# resolv.conf and the like into the queue directory as Debian's init script does, so a
# chrooted smtp client could not resolve the relayhost), and makedefs.out (a link to
# /usr/share/postfix, build information only) is left out of the copy (`postfix check`
# warns about a link leaving any config directory but /etc/postfix, and the agent refuses a
# configuration whose check warns). unbound (with Debian's root trust anchor) is the
# validating resolver the chart runs beside Postfix with relay.dnssec (DANE). Build from the
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
      postfix postfix-lmdb postfix-cdb postfix-pcre ca-certificates unbound dns-root-data \
 && rm -rf /var/lib/apt/lists/* \
 && cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf \
 && postconf -e "inet_interfaces = all" "mydestination =" "maillog_file = /dev/stdout" \
      "smtp_tls_CApath = /etc/ssl/certs" "smtp_tls_security_level = may" \
 && postconf -F "*/*/chroot = n" \
 && mkdir -p /etc/postfix/mailtls /usr/share/mailtls \
 && cp -a /etc/postfix /usr/share/mailtls/postfix \
 && rm /usr/share/mailtls/postfix/makedefs.out
COPY --from=build /src/target/release/mailtls /usr/local/bin/mailtls
EXPOSE 25
ENTRYPOINT ["/usr/local/bin/mailtls"]
