#!/usr/bin/env bash
# Installs what the tests need on Debian: Postfix with the lmdb, cdb and pcre map types
# (the real-Postfix tests), dnsmasq-base and iproute2 (local DNS and network namespaces),
# openssl (test certificates for the API server), swaks (sends mail into the relay in the
# end-to-end test), lua5.4 (runs the documented Argo CD health check), podman and
# debootstrap (the relay pod test builds the images without a registry, see
# scripts/test-images.sh), unbound, ldnsutils and bind9-dnsutils (the DANE tests: zones signed
# with ldns-signzone, a validating unbound, dig; tests/common/dnssec.rs). Does nothing when all
# is present.
set -euo pipefail

packages=(postfix postfix-lmdb postfix-cdb postfix-pcre dnsmasq-base iproute2 openssl swaks lua5.4
    podman debootstrap unbound dns-root-data ldnsutils bind9-dnsutils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
        echo "install-test-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi
echo "install-test-deps: installing ${missing[*]}" >&2
# A local-only Postfix; the tests use private instance directories, never this one.
echo "postfix postfix/main_mailer_type select Local only" | $sudo debconf-set-selections
echo "postfix postfix/mailname string mailtls-test.invalid" | $sudo debconf-set-selections
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
