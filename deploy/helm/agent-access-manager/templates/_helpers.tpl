{{/* Names and labels. */}}
{{- define "aam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aam.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aam.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aam.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aam.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aam.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aam.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aam.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "aam.opaImage" -}}
{{- if .Values.opa.image.repository }}
{{- printf "%s:%s" .Values.opa.image.repository (required "opa.image.tag is required with opa.image.repository" .Values.opa.image.tag) }}
{{- else }}
{{- include "aam.image" . }}
{{- end }}
{{- end }}

{{- define "aam.bundleSigningSecret" -}}
{{- default (printf "%s-bundle-signing" (include "aam.fullname" .)) .Values.bundleSigning.secretName }}
{{- end }}

{{- define "aam.policiesConfigMap" -}}
{{- if eq .Values.policies.source "existingConfigMap" }}
{{- required "policies.existingConfigMap: name the ConfigMap of policy YAML" .Values.policies.existingConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "aam.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Checks of the values that would otherwise only fail when the pod starts.
*/}}
{{- define "aam.validate" -}}
{{- $src := .Values.policies.source }}
{{- if not (has $src (list "configMap" "existingConfigMap" "volume" "customResources")) }}
{{- fail (printf "policies.source must be configMap, existingConfigMap, volume or customResources, got %q" $src) }}
{{- end }}
{{- if and (eq $src "configMap") (not .Values.policies.files) }}
{{- fail "policies.files is empty: the PDP does not start without policies. Give policy YAML by file name in policies.files (helm install --set-file 'policies.files.team\\.yaml=team.yaml'), or set policies.source=existingConfigMap or volume." }}
{{- end }}
{{- if and (eq $src "volume") (or (not .Values.policies.volume) (not .Values.policies.path)) }}
{{- fail "policies.source=volume needs policies.volume (a volume source) and policies.path (the policy directory inside it)" }}
{{- end }}
{{- if not (has .Values.opa.mode (list "sidecar" "managed")) }}
{{- fail (printf "opa.mode must be sidecar or managed, got %q" .Values.opa.mode) }}
{{- end }}
{{- if and .Values.ledger.enabled (not .Values.ledger.secretName) }}
{{- fail "ledger.enabled needs ledger.secretName: a Secret whose key (ledger.key) holds the PostgreSQL connection string" }}
{{- end }}
{{- if and .Values.ledger.enabled (not .Values.audit.keySecretName) }}
{{- fail "ledger.enabled needs audit.keySecretName: the PDP refuses a ledger without the audit keyring (aam audit key init FILE; kubectl create secret generic NAME --from-file=keyring.json=FILE)" }}
{{- end }}
{{- if and .Values.vault.enabled (or (not .Values.vault.addr) (not .Values.vault.secretName)) }}
{{- fail "vault.enabled needs vault.addr and vault.secretName (a Secret with the AppRole role id and secret id)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a Secret with the PDP's certificate chain, key and client CA bundle" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.gatewayToken.secretName }}
{{- fail "gatewayToken is for a plaintext PDP only: over mTLS gateways are named in config.trusted_gateways" }}
{{- end }}
{{- $reserved := list "grpc_addr" "plaintext" "policies" "watch" "policy_source" "kube_api_url" "kube_token_file" "kube_ca_file" "kube_namespace" "opa_url" "opa_addr" "opa_binary" "opa_gogc" "http_addr" "workers" "max_workers" "extauthz_addr" "bundle_signing_key" "bundle_signing_alg" "bundle_signing_key_id" "tls_cert" "tls_key" "tls_client_ca" "gateway_token_file" "broker" "vault_addr" "vault_role_id" "vault_secret_id_file" "vault_approle_mount" "vault_timeout_ms" "vault_ca_file" "ledger_url" "ledger_migrate" "ledger_pool_size" "ledger_timeout_ms" "audit_key_file" "audit_anchor_file" }}
{{- range $k, $_ := .Values.config }}
{{- if has $k $reserved }}
{{- fail (printf "config.%s is set by the chart from its own values (see values.yaml); remove it from config" $k) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where secrets land in the pod. */}}
{{- define "aam.paths" -}}
secretFiles: /run/secrets/aam
mounted: /run/secrets/aam-mounted
{{- end }}

{{/*
The PDP's settings (pdp/config.py): everything but secret values, rendered as TOML.
Values given as AAM_* environment variables from Secrets (ledger_url, vault_role_id) are
not here.
*/}}
{{- define "aam.settings" -}}
{{- $s := dict }}
{{- $_ := set $s "grpc_addr" (printf "0.0.0.0:%d" (int .Values.grpc.port)) }}
{{- $_ := set $s "plaintext" (not .Values.tls.enabled) }}
{{- if eq .Values.policies.source "volume" }}
{{- $_ := set $s "policies" (printf "/etc/aam/policies/%s" (trimPrefix "/" .Values.policies.path)) }}
{{- else }}
{{- /* A ConfigMap volume also holds each file in the kubelet's hidden ..data and
       timestamped directories; the compiler skips hidden paths, so it reads each once. */}}
{{- $_ := set $s "policies" "/etc/aam/policies" }}
{{- end }}
{{- $_ := set $s "watch" .Values.policies.watch }}
{{- if eq .Values.policies.source "customResources" }}
{{- /* The custom resources of the release's namespace (pdp/kubesource.py), through the
       in-cluster API server name and the pod's service-account token (the defaults). */}}
{{- $_ := set $s "policy_source" "kubernetes" }}
{{- $_ := set $s "kube_namespace" .Release.Namespace }}
{{- end }}
{{- $_ := set $s "http_addr" (printf "0.0.0.0:%d" (int .Values.metrics.port)) }}
{{- $_ := set $s "workers" (int .Values.workers) }}
{{- $_ := set $s "max_workers" (int .Values.maxWorkers) }}
{{- if .Values.extAuthz.port }}
{{- $_ := set $s "extauthz_addr" (printf "0.0.0.0:%d" (int .Values.extAuthz.port)) }}
{{- end }}
{{- if eq .Values.opa.mode "sidecar" }}
{{- $_ := set $s "opa_url" (printf "http://127.0.0.1:%d" (int .Values.opa.port)) }}
{{- $_ := set $s "bundle_signing_key" "/run/secrets/aam/bundle-signing.key" }}
{{- $_ := set $s "bundle_signing_alg" .Values.bundleSigning.algorithm }}
{{- $_ := set $s "bundle_signing_key_id" .Values.bundleSigning.keyId }}
{{- else }}
{{- $_ := set $s "opa_binary" "/usr/local/bin/opa" }}
{{- $_ := set $s "opa_gogc" (int .Values.opa.gogc) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $s "tls_cert" "/run/secrets/aam-mounted/tls/tls.crt" }}
{{- $_ := set $s "tls_key" "/run/secrets/aam-mounted/tls/tls.key" }}
{{- $_ := set $s "tls_client_ca" "/run/secrets/aam-mounted/tls/ca.crt" }}
{{- else if .Values.gatewayToken.secretName }}
{{- $_ := set $s "gateway_token_file" "/run/secrets/aam/gateway.token" }}
{{- end }}
{{- if .Values.vault.enabled }}
{{- $_ := set $s "broker" "vault" }}
{{- $_ := set $s "vault_addr" .Values.vault.addr }}
{{- $_ := set $s "vault_secret_id_file" "/run/secrets/aam-mounted/vault/secret-id" }}
{{- $_ := set $s "vault_approle_mount" .Values.vault.approleMount }}
{{- $_ := set $s "vault_timeout_ms" (int .Values.vault.timeoutMs) }}
{{- if .Values.vault.caConfigMap }}
{{- $_ := set $s "vault_ca_file" "/etc/aam/vault-ca/ca.crt" }}
{{- end }}
{{- end }}
{{- if .Values.ledger.enabled }}
{{- $_ := set $s "ledger_migrate" false }}
{{- $_ := set $s "ledger_pool_size" (int .Values.ledger.poolSize) }}
{{- $_ := set $s "ledger_timeout_ms" (int .Values.ledger.timeoutMs) }}
{{- end }}
{{- if .Values.audit.keySecretName }}
{{- $_ := set $s "audit_key_file" "/run/secrets/aam/audit.key" }}
{{- if .Values.audit.anchor.enabled }}
{{- $_ := set $s "audit_anchor_file" "/var/lib/aam/anchor/audit.anchor" }}
{{- end }}
{{- end }}
{{- $all := merge $s (deepCopy .Values.config) }}
# Rendered by the agent-access-manager chart; every setting is in docs/configuration.md.
# From Secrets, as environment variables: AAM_LEDGER_URL, AAM_VAULT_ROLE_ID.
{{- range $k := keys $all | sortAlpha }}
{{ $k }} = {{ index $all $k | toJson }}
{{- end }}
{{- end }}

{{/* The pod gets a service-account token only when it reads the custom resources. */}}
{{- define "aam.kubeToken" -}}
{{- or (eq .Values.policies.source "customResources") .Values.policies.customResourcesRBAC }}
{{- end }}
