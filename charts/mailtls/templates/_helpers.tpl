{{/* Full name: the release name, with the chart name unless the release already has it. */}}
{{- define "mailtls.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailtls.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mailtls.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mailtls.relaySelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end -}}

{{- define "mailtls.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailtls.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Restricted pod security for containers that need no privileges. */}}
{{- define "mailtls.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The relay's STARTTLS Secret: relay.tls.secretName, or the cert-manager Certificate's
default when an issuer is set; empty for no STARTTLS. */}}
{{- define "mailtls.relayTlsSecret" -}}
{{- if .Values.relay.tls.secretName -}}
{{- .Values.relay.tls.secretName -}}
{{- else if .Values.relay.tls.certManager.issuerRef.name -}}
{{- printf "%s-relay-tls" (include "mailtls.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The relay's validating resolver (unbound.conf): DNSSEC validation against the root trust
anchor Debian ships, the cluster domain asked of the cluster DNS unvalidated, everything else
forwarded (with DNSSEC records) to the forwarders or the cluster DNS.
*/}}
{{- define "mailtls.unboundConf" -}}
{{- $d := .Values.relay.dnssec -}}
{{- $dns := $d.clusterDns -}}
{{- if not $dns -}}
{{- range list (list "kube-system" "kube-dns") (list "openshift-dns" "dns-default") -}}
{{- if not $dns -}}
{{- with lookup "v1" "Service" (index . 0) (index . 1) -}}
{{- $dns = .spec.clusterIP -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $dns -}}
{{- fail "relay.dnssec.enabled (DANE, on by default) needs relay.dnssec.clusterDns, the cluster DNS Service's address (kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}'): it could not be looked up here (helm template and Argo CD cannot). Set it, or set relay.dnssec.enabled=false to send without DANE." -}}
{{- end -}}
server:
  interface: 127.0.0.1
  port: 53
  access-control: 127.0.0.0/8 allow
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  use-syslog: no
  logfile: ""
  module-config: "validator iterator"
  trust-anchor-file: "/usr/share/dns/root.key"
  # The cluster DNS and forwarders may be private addresses.
  do-not-query-localhost: no
  domain-insecure: "{{ $d.clusterDomain }}"
  {{- range $d.extraConfig }}
  {{ . }}
  {{- end }}
forward-zone:
  name: "{{ $d.clusterDomain }}"
  forward-addr: {{ $dns }}
forward-zone:
  name: "."
  {{- range ($d.forwarders | default (list $dns)) }}
  forward-addr: {{ . }}
  {{- end }}
{{- end -}}
