# The relay image of deploy/docker/relay.Dockerfile, built without a registry or a Rust
# toolchain in the image: FROM a Debian base made with debootstrap, and the mailtls binary
# built on the host (Debian 12, same glibc) copied in. scripts/test-images.sh builds it for
# the pod tests (tests/relay_pod.rs, which also checks that the Postfix step below stays
# the same as relay.Dockerfile's):
#   scripts/test-images.sh build target/debug/mailtls
# The context directory holds the binary only, named mailtls.
ARG BASE=localhost/mailtls-test-base:bookworm
FROM ${BASE}
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
COPY mailtls /usr/local/bin/mailtls
EXPOSE 25
ENTRYPOINT ["/usr/local/bin/mailtls"]
