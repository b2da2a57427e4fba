#!/usr/bin/env bash
# A real, throw-away Kubernetes API server (etcd + kube-apiserver, no kubelet) for the
# cluster tests, plus helm, all built from source with Go through the module proxy.
#
# Usage:
#   scripts/test-cluster.sh check            exit 0 if the cluster can run here (cached binaries
#                                            or a Go toolchain to build them), else 3
#   scripts/test-cluster.sh build            build (or reuse) etcd, kube-apiserver, helm and promtool
#   scripts/test-cluster.sh start            build if needed, start etcd + kube-apiserver
#   scripts/test-cluster.sh env              print the KUBECONFIG export for the running cluster
#   scripts/test-cluster.sh status           say whether the cluster is running
#   scripts/test-cluster.sh stop             stop both and remove the temporary state
#   scripts/test-cluster.sh bin-dir          print the directory holding the binaries
#   scripts/test-cluster.sh -- CMD [ARGS...] build if needed, start a private cluster, run CMD
#                                            with KUBECONFIG and MAILTLS_TEST_KUBECONFIG set,
#                                            stop the cluster on any exit, exit with CMD's code.
#                                            CMD also gets MAILTLS_HELM (the helm binary),
#                                            MAILTLS_K8S_VERSION (e.g. v1.37.2, for
#                                            `helm template --kube-version`) and the binary
#                                            directory first on PATH (helm, etcd, kube-apiserver)
#
# Binaries are cached (they survive fresh clones on the same machine) in
#   ${MAILTLS_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/mailtls/k8s-bin/<k8s-version>}
# and are only built when missing. Delete that directory to force a rebuild.
#
# Environment:
#   MAILTLS_K8S_BIN        binary directory (see above)
#   MAILTLS_CLUSTER_DIR    state directory for start/env/status/stop
#                          (default: ${TMPDIR:-/tmp}/mailtls-test-cluster-$UID); the wrapper
#                          mode always uses a fresh private one
#   MAILTLS_CLUSTER_KEEP=1 keep the state directory (logs) after stop
#   MAILTLS_CLUSTER_LOG=1  wrapper mode: print the server logs when CMD fails
#
# Exit codes: CMD's own code in wrapper mode; 0 success; 1 failure; 2 usage error;
#             3 no Go toolchain (and binaries not yet built); 4 build failed;
#             5 the cluster failed to start.
set -euo pipefail

# ---- versions ------------------------------------------------------------------------------
# kube-apiserver matches the k8s-openapi feature `v1_37` in Cargo.toml.
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
HELM_MODULE=helm.sh/helm/v3
HELM_VERSION=v3.22.0
# promtool checks the chart's alerts (tests/alerts.rs); Prometheus 3's Go module versions are
# v0.3xx.
PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0

EXIT_NO_GO=3
EXIT_BUILD=4
EXIT_START=5

PROG=test-cluster.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    local code=$1
    shift
    log "error: $*"
    exit "$code"
}

BIN_DIR=${MAILTLS_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/mailtls/k8s-bin/$K8S_VERSION}
DEFAULT_STATE_DIR=${MAILTLS_CLUSTER_DIR:-${TMPDIR:-/tmp}/mailtls-test-cluster-$(id -u)}

# ---- build ---------------------------------------------------------------------------------

# Kubernetes v1.37 and etcd v3.6.16 declare `go 1.26.0` in their go.mod.
GO_MIN_MINOR=26

# go_problem: empty when a usable Go toolchain is on PATH, else why not
go_problem() {
    if ! command -v go >/dev/null 2>&1; then
        echo "no Go toolchain ('go' is not on PATH)"
        return
    fi
    local v
    v=$(go env GOVERSION 2>/dev/null || true)
    if [[ ! "$v" =~ ^go1\.([0-9]+) ]]; then
        echo "cannot tell the Go version ('go env GOVERSION' said '$v')"
    elif ((BASH_REMATCH[1] < GO_MIN_MINOR)); then
        echo "Go $v is too old (need go1.$GO_MIN_MINOR or newer)"
    fi
}

require_go() {
    local problem
    problem=$(go_problem)
    if [[ -n "$problem" ]]; then
        log "error: $problem: cannot build etcd/kube-apiserver/helm."
        log "       Install Go >= 1.$GO_MIN_MINOR, or put prebuilt binaries in $BIN_DIR"
        exit "$EXIT_NO_GO"
    fi
}

# binary_ok NAME VERSION: the cached binary exists and was built for VERSION
binary_ok() {
    [[ -x "$BIN_DIR/$1" && -f "$BIN_DIR/$1.version" && "$(cat "$BIN_DIR/$1.version")" == "$2" ]]
}

# go_build NAME MODULE VERSION PACKAGE LDFLAGS [extra go.mod lines...]
# Builds PACKAGE from MODULE@VERSION inside a throw-away wrapper module, so that modules
# whose own go.mod has replace directives (k8s.io/kubernetes, etcd) can be built too.
go_build() {
    local name=$1 module=$2 version=$3 pkg=$4 ldflags=$5
    shift 5
    local work start ticker rc=0
    work=$(mktemp -d "${TMPDIR:-/tmp}/mailtls-build-$name.XXXXXX")
    start=$SECONDS
    {
        echo "module mailtls.local/build/$name"
        echo
        echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
        echo
        echo "require $module $version"
        for line in "$@"; do echo "$line"; done
    } >"$work/go.mod"
    # progress: a line every 30 s while Go works quietly
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 30 &
            nap=$!
            wait "$nap"
            log "  ... still building $name ($((SECONDS - start))s)"
        done
    ) &
    ticker=$!
    (
        set -e
        cd "$work"
        export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
        log "$name: resolving $module@$version through the module proxy ..."
        if ! go get "$pkg@$version" >"$work/get.log" 2>&1; then
            cat "$work/get.log" >&2
            exit 1
        fi
        log "$name: compiling $pkg ..."
        nice -n 10 go build -trimpath -ldflags="-s -w $ldflags" -o "$BIN_DIR/$name.tmp" "$pkg"
    ) || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    if ((rc != 0)); then
        rm -rf "$work" "$BIN_DIR/$name.tmp"
        die "$EXIT_BUILD" "building $name ($module@$version) failed (see the Go output above)"
    fi
    mv -f "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
    echo "$version" >"$BIN_DIR/$name.version"
    rm -rf "$work"
    log "built $name $version in $((SECONDS - start))s -> $BIN_DIR/$name"
}

build_etcd() {
    binary_ok etcd "$ETCD_VERSION" && return 0
    go_build etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 \
        "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
}

build_kube_apiserver() {
    binary_ok kube-apiserver "$K8S_VERSION" && return 0
    # k8s.io/kubernetes replaces its staging modules (k8s.io/api, k8s.io/apiserver, ...) with
    # ./staging/src/... directories and requires them at v0.0.0. Those replaces do not apply
    # to a dependency, so replace each with its published twin: v1.37.2 -> v0.37.2.
    local gomod staging_version replaces=() mod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -n "$gomod" && -f "$gomod" ]] || die "$EXIT_BUILD" "cannot download k8s.io/kubernetes@$K8S_VERSION from the module proxy"
    staging_version=v0.${K8S_VERSION#v1.}
    while read -r mod; do
        replaces+=("replace $mod => $mod $staging_version")
    done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod" | sort -u)
    [[ ${#replaces[@]} -gt 0 ]] || die "$EXIT_BUILD" "found no staging replaces in $gomod"
    log "kube-apiserver: replacing ${#replaces[@]} staging modules with their $staging_version twins"
    local major=${K8S_VERSION#v}
    local minor=${major#*.}
    major=${major%%.*}
    minor=${minor%%.*}
    local x=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    go_build kube-apiserver k8s.io/kubernetes "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver \
        "$x" "${replaces[@]}"
}

build_helm() {
    binary_ok helm "$HELM_VERSION" && return 0
    go_build helm "$HELM_MODULE" "$HELM_VERSION" "$HELM_MODULE/cmd/helm" \
        "-X $HELM_MODULE/internal/version.version=$HELM_VERSION"
}

build_promtool() {
    binary_ok promtool "$PROMETHEUS_VERSION" && return 0
    go_build promtool "$PROMETHEUS_MODULE" "$PROMETHEUS_VERSION" "$PROMETHEUS_MODULE/cmd/promtool" ""
}

all_binaries_ok() {
    binary_ok etcd "$ETCD_VERSION" && binary_ok kube-apiserver "$K8S_VERSION" &&
        binary_ok helm "$HELM_VERSION" && binary_ok promtool "$PROMETHEUS_VERSION"
}

# check: can the cluster run here (binaries cached, or a Go toolchain to build them)?
cmd_check() {
    if all_binaries_ok; then
        echo "ok: cached binaries in $BIN_DIR"
        return 0
    fi
    require_go
    echo "ok: $(go env GOVERSION) will build the binaries into $BIN_DIR"
}

cmd_build() {
    if all_binaries_ok; then
        log "using cached binaries in $BIN_DIR (etcd $ETCD_VERSION, kube-apiserver $K8S_VERSION, helm $HELM_VERSION, promtool $PROMETHEUS_VERSION)"
        return 0
    fi
    require_go
    mkdir -p "$BIN_DIR"
    log "building into $BIN_DIR with $(go version) (a cold build takes several minutes)"
    local start=$SECONDS
    build_etcd
    build_kube_apiserver
    build_helm
    build_promtool
    log "build finished in $((SECONDS - start))s"
}

# ---- certificates --------------------------------------------------------------------------

# gen_certs DIR: CA, kube-apiserver serving certificate (127.0.0.1, localhost) and the
# service-account signing key pair.
gen_certs() {
    local dir=$1
    if command -v openssl >/dev/null 2>&1; then
        gen_certs_openssl "$dir"
    elif command -v go >/dev/null 2>&1; then
        gen_certs_go "$dir"
    else
        die "$EXIT_START" "need openssl or Go to generate the test certificates"
    fi
}

gen_certs_openssl() {
    local dir=$1 out
    if ! out=$(
        set -e
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 2 -subj "/CN=mailtls-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>&1
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>&1
        printf '%s\n' "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
            >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 2 -extfile apiserver.ext 2>&1
        openssl genrsa -out sa.key 2048 2>&1
        openssl rsa -in sa.key -pubout -out sa.pub 2>&1
    ); then
        printf '%s\n' "$out" >&2
        die "$EXIT_START" "openssl failed to generate the test certificates"
    fi
}

gen_certs_go() {
    local dir=$1 src
    src=$(mktemp -d "${TMPDIR:-/tmp}/mailtls-certgen.XXXXXX")
    cat >"$src/main.go" <<'GO'
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func write(dir, name, typ string, der []byte) {
	must(os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func main() {
	dir := os.Args[1]
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailtls-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	must(err)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	must(err)
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	write(dir, "ca.crt", "CERTIFICATE", caDER)
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	must(err)
	write(dir, "ca.key", "PRIVATE KEY", caKeyDER)
	write(dir, "apiserver.crt", "CERTIFICATE", srvDER)
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	must(err)
	write(dir, "apiserver.key", "PRIVATE KEY", srvKeyDER)
	saDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	must(err)
	write(dir, "sa.key", "PRIVATE KEY", saDER)
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	must(err)
	write(dir, "sa.pub", "PUBLIC KEY", saPub)
}
GO
    if ! (cd "$src" && GOFLAGS='' GO111MODULE=off CGO_ENABLED=0 go run main.go "$dir"); then
        rm -rf "$src"
        die "$EXIT_START" "generating the test certificates with Go failed"
    fi
    rm -rf "$src"
}

# ---- ports ---------------------------------------------------------------------------------

# port_in_use PORT: some TCP socket (any state) on this machine uses PORT locally.
port_in_use() {
    local hex
    hex=$(printf '%04X' "$1")
    # /proc/net/tcp{,6}: "sl local_address rem_address st ...", local_address is ADDR:PORT in hex.
    awk -v p=":$hex" 'NR > 1 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# free_port VAR: set VAR to a TCP port that nothing uses now, below the kernel's ephemeral
# range so that outgoing connections cannot take it in the meantime, and not handed out
# before by this script; the caller retries on a lost race.
USED_PORTS=""
free_port() {
    local -n _out=$1
    local _fp_lo=20000 _fp_hi=32000 _fp_range _fp_port _fp_i _fp_eph
    if _fp_range=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null); then
        read -r _fp_eph _ <<<"$_fp_range"
        if ((_fp_eph > 12000 && _fp_eph - 1 < _fp_hi)); then _fp_hi=$((_fp_eph - 1)); fi
    fi
    for ((_fp_i = 0; _fp_i < 200; _fp_i++)); do
        _fp_port=$((_fp_lo + (RANDOM * 32768 + RANDOM) % (_fp_hi - _fp_lo)))
        if ! port_in_use "$_fp_port" && [[ " $USED_PORTS " != *" $_fp_port "* ]]; then
            USED_PORTS="$USED_PORTS $_fp_port"
            _out=$_fp_port
            return 0
        fi
    done
    die "$EXIT_START" "found no free TCP port in $_fp_lo-$_fp_hi"
}

# ---- processes -----------------------------------------------------------------------------

# pid_alive PID NAME: PID is running and is our NAME binary
pid_alive() {
    local pid=$1 name=$2 exe
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    exe=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
    [[ "$exe" == *"/$name "* ]]
}

# reap PID: collect the exit status of our own child (no zombie left behind); a no-op for
# a process that another invocation started
reap() {
    wait "$1" 2>/dev/null || true
}

# signal_wait PID NAME SIGNAL TENTHS: send SIGNAL, wait up to TENTHS/10 s for the exit
signal_wait() {
    local pid=$1 name=$2 i
    kill "-$3" "$pid" 2>/dev/null || true
    for ((i = 0; i < $4; i++)); do
        if ! pid_alive "$pid" "$name"; then
            reap "$pid"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# stop_pid PID NAME: SIGTERM, wait up to 15 s, then SIGKILL
stop_pid() {
    local pid=$1 name=$2
    pid_alive "$pid" "$name" || return 0
    signal_wait "$pid" "$name" TERM 150 && return 0
    log "$name (pid $pid) did not stop after SIGTERM; sending SIGKILL"
    signal_wait "$pid" "$name" KILL 50 && return 0
    log "warning: $name (pid $pid) is still running"
    return 1
}

# running PID: the process exists and has not exited (a zombie has). Used while waiting for
# a daemon just started: its name is not checked, because under load the child may not
# have exec'd the binary yet (pid_alive would call that dead).
running() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ "$state" != Z ]]
}

# start_daemon STATE NAME LOGFILE CMD...: start CMD in its own session, record its PID
start_daemon() {
    local state=$1 name=$2 logfile=$3
    shift 3
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" </dev/null >"$logfile" 2>&1 &
    else
        "$@" </dev/null >"$logfile" 2>&1 &
    fi
    echo $! >"$state/$name.pid"
}

# wait_until SECONDS PID NAME CHECK...: poll CHECK until it succeeds; stop early when the
# process died (WAIT_DIED=1)
wait_until() {
    local timeout=$1 pid=$2 name=$3 deadline
    shift 3
    WAIT_DIED=0
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! running "$pid"; then
            WAIT_DIED=1
            return 1
        fi
        sleep 0.2
    done
    return 1
}

show_log() {
    local logfile=$1 name=$2
    log "---- last lines of the $name log ($logfile; MAILTLS_CLUSTER_KEEP=1 keeps it) ----"
    tail -n 40 "$logfile" >&2 || true
    log "----"
}

# start_with_retries STATE NAME TIMEOUT: launch_NAME STATE picks free ports and starts the
# daemon; wait until ready_NAME STATE succeeds. When a port was taken between the choice
# and the bind, try again with new ports.
start_with_retries() {
    local state=$1 name=$2 timeout=$3 attempt
    for attempt in 1 2 3 4 5; do
        "launch_$name" "$state"
        if wait_until "$timeout" "$(cat "$state/$name.pid")" "$name" "ready_$name" "$state"; then
            return 0
        fi
        stop_pid "$(cat "$state/$name.pid")" "$name" || true
        if grep -q 'address already in use' "$state/$name.log"; then
            log "$name: a port was taken meanwhile; retrying with new ports ($attempt/5)"
            continue
        fi
        show_log "$state/$name.log" "$name"
        if ((WAIT_DIED)); then
            die "$EXIT_START" "$name exited before it became ready"
        fi
        die "$EXIT_START" "$name was not ready after ${timeout}s"
    done
    die "$EXIT_START" "$name: no free ports after 5 attempts"
}

# ---- cluster -------------------------------------------------------------------------------

launch_etcd() {
    local state=$1 client peer
    free_port client
    free_port peer
    echo "$client" >"$state/etcd.port"
    rm -rf "$state/etcd-data"
    start_daemon "$state" etcd "$state/etcd.log" "$BIN_DIR/etcd" \
        --name=mailtls-test \
        --data-dir="$state/etcd-data" \
        --listen-client-urls="http://127.0.0.1:$client" \
        --advertise-client-urls="http://127.0.0.1:$client" \
        --listen-peer-urls="http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
        --initial-cluster="mailtls-test=http://127.0.0.1:$peer" \
        --unsafe-no-fsync=true \
        --log-level=warn
}

ready_etcd() {
    curl -fsS --max-time 2 "http://127.0.0.1:$(cat "$1/etcd.port")/health"
}

launch_kube-apiserver() {
    local state=$1 port
    free_port port
    echo "$port" >"$state/kube-apiserver.port"
    start_daemon "$state" kube-apiserver "$state/kube-apiserver.log" "$BIN_DIR/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$(cat "$state/etcd.port")" \
        --etcd-prefix=/mailtls-test \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$port" \
        --cert-dir="$state/pki" \
        --tls-cert-file="$state/pki/apiserver.crt" \
        --tls-private-key-file="$state/pki/apiserver.key" \
        --client-ca-file="$state/pki/ca.crt" \
        --token-auth-file="$state/pki/tokens.csv" \
        --authorization-mode=RBAC \
        --anonymous-auth=false \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$state/pki/sa.pub" \
        --service-account-signing-key-file="$state/pki/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --allow-privileged=true \
        --disable-admission-plugins=ServiceAccount \
        --endpoint-reconciler-type=none \
        --profiling=false
}

ready_kube-apiserver() {
    # the token is read from a file so that it never shows in a process list
    curl -fsS --max-time 5 --cacert "$1/pki/ca.crt" -H "@$1/pki/auth-header" \
        "https://127.0.0.1:$(cat "$1/kube-apiserver.port")/readyz"
}

write_kubeconfig() {
    local state=$1 port ca token
    port=$(cat "$state/kube-apiserver.port")
    ca=$(base64 -w0 <"$state/pki/ca.crt")
    token=$(cat "$state/pki/token")
    cat >"$state/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: mailtls-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $ca
users:
- name: mailtls-test-admin
  user:
    token: $token
contexts:
- name: mailtls-test
  context:
    cluster: mailtls-test
    user: mailtls-test-admin
    namespace: default
current-context: mailtls-test
KUBECONFIG
    chmod 600 "$state/kubeconfig"
}

cluster_running() {
    local state=$1
    [[ -f "$state/kubeconfig" ]] &&
        pid_alive "$(cat "$state/etcd.pid" 2>/dev/null)" etcd &&
        pid_alive "$(cat "$state/kube-apiserver.pid" 2>/dev/null)" kube-apiserver
}

# start_cluster STATE: STATE must not hold a running cluster
start_cluster() {
    local state=$1 start
    start=$SECONDS
    if [[ -e "$state/etcd.pid" || -e "$state/kube-apiserver.pid" ]]; then
        if cluster_running "$state"; then
            die "$EXIT_START" "a cluster is already running in $state (run '$0 stop' first)"
        fi
        stop_cluster "$state" quiet
    fi
    command -v curl >/dev/null 2>&1 ||
        die "$EXIT_START" "curl is needed to wait for the servers to be ready (apt-get install curl)"
    mkdir -p "$state/pki"
    chmod 700 "$state"
    gen_certs "$state/pki"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$state/pki/token"
    # token,user,uid,"group1,group2"
    printf '%s,mailtls-test-admin,mailtls-test-admin,"system:masters"\n' "$(cat "$state/pki/token")" \
        >"$state/pki/tokens.csv"
    printf 'Authorization: Bearer %s\n' "$(cat "$state/pki/token")" >"$state/pki/auth-header"
    chmod 600 "$state/pki"/*
    log "starting etcd $ETCD_VERSION ..."
    start_with_retries "$state" etcd 60
    log "starting kube-apiserver $K8S_VERSION ..."
    start_with_retries "$state" kube-apiserver 120
    write_kubeconfig "$state"
    log "cluster ready in $((SECONDS - start))s: https://127.0.0.1:$(cat "$state/kube-apiserver.port") (etcd 127.0.0.1:$(cat "$state/etcd.port")), KUBECONFIG=$state/kubeconfig"
}

# stop_cluster STATE [quiet]
stop_cluster() {
    local state=$1 quiet=${2:-} rc=0
    [[ -d "$state" ]] || {
        [[ -n "$quiet" ]] || log "no cluster state in $state"
        return 0
    }
    stop_pid "$(cat "$state/kube-apiserver.pid" 2>/dev/null || true)" kube-apiserver || rc=1
    stop_pid "$(cat "$state/etcd.pid" 2>/dev/null || true)" etcd || rc=1
    if [[ "${MAILTLS_CLUSTER_KEEP:-0}" == 1 ]]; then
        rm -f "$state"/*.pid
        [[ -n "$quiet" ]] || log "stopped; kept $state (MAILTLS_CLUSTER_KEEP=1)"
    elif ((rc == 0)); then
        rm -rf "$state"
        [[ -n "$quiet" ]] || log "stopped; removed $state"
    else
        log "warning: some processes did not stop; kept $state"
    fi
    return "$rc"
}

# ---- commands ------------------------------------------------------------------------------

print_env() {
    local kc=$DEFAULT_STATE_DIR/kubeconfig
    echo "export KUBECONFIG=$kc MAILTLS_TEST_KUBECONFIG=$kc MAILTLS_HELM=$BIN_DIR/helm MAILTLS_K8S_VERSION=$K8S_VERSION"
}

cmd_start() {
    cmd_build
    start_cluster "$DEFAULT_STATE_DIR"
    print_env
}

cmd_env() {
    cluster_running "$DEFAULT_STATE_DIR" || die 1 "no cluster running in $DEFAULT_STATE_DIR (run '$0 start')"
    print_env
}

cmd_status() {
    if cluster_running "$DEFAULT_STATE_DIR"; then
        echo "running: https://127.0.0.1:$(cat "$DEFAULT_STATE_DIR/kube-apiserver.port") (KUBECONFIG=$DEFAULT_STATE_DIR/kubeconfig)"
    else
        echo "not running"
        return 1
    fi
}

cmd_stop() {
    stop_cluster "$DEFAULT_STATE_DIR"
}

WRAP_STATE=""
WRAP_CHILD=""
# on_signal SIGNAL CODE: pass SIGNAL on to the running command, then exit (-> cleanup)
on_signal() {
    if [[ -n "$WRAP_CHILD" ]]; then
        kill -"$1" "$WRAP_CHILD" 2>/dev/null || true
        wait "$WRAP_CHILD" 2>/dev/null || true
    fi
    exit "$2"
}

wrap_cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$WRAP_STATE" ]]; then
        if ((rc != 0)) && [[ "${MAILTLS_CLUSTER_LOG:-0}" == 1 && -f "$WRAP_STATE/kube-apiserver.log" ]]; then
            show_log "$WRAP_STATE/kube-apiserver.log" kube-apiserver
        fi
        stop_cluster "$WRAP_STATE" quiet || rc=1
        log "cluster stopped"
    fi
    exit "$rc"
}

cmd_wrap() {
    [[ $# -gt 0 ]] || die 2 "no command after '--'"
    cmd_build
    WRAP_STATE=$(mktemp -d "${TMPDIR:-/tmp}/mailtls-test-cluster.XXXXXX")
    trap wrap_cleanup EXIT
    trap 'on_signal INT 130' INT
    trap 'on_signal TERM 143' TERM
    trap 'on_signal HUP 129' HUP
    start_cluster "$WRAP_STATE"
    local rc=0 start=$SECONDS
    log "running: $*"
    # In the background (stdin kept) so that a signal to this script reaches the trap at once.
    KUBECONFIG="$WRAP_STATE/kubeconfig" MAILTLS_TEST_KUBECONFIG="$WRAP_STATE/kubeconfig" \
        MAILTLS_HELM="$BIN_DIR/helm" MAILTLS_K8S_VERSION="$K8S_VERSION" PATH="$BIN_DIR:$PATH" \
        "$@" <&0 &
    WRAP_CHILD=$!
    wait "$WRAP_CHILD" || rc=$?
    WRAP_CHILD=""
    log "command exited with $rc after $((SECONDS - start))s"
    exit "$rc"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
}

main() {
    [[ $# -gt 0 ]] || {
        usage
        exit 2
    }
    local cmd=$1
    shift
    case "$cmd" in
    build) cmd_build ;;
    check) cmd_check ;;
    start) cmd_start ;;
    env) cmd_env ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    bin-dir) echo "$BIN_DIR" ;;
    --) cmd_wrap "$@" ;;
    -h | --help | help) usage ;;
    *)
        log "unknown command: $cmd"
        usage
        exit 2
        ;;
    esac
}

# Sourcing the file (for debugging) only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
