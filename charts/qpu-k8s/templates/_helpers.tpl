{{/* Name of the chart, overridable. */}}
{{- define "qpu-k8s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: <release>-qpu-k8s, or the release name when it says qpu-k8s. */}}
{{- define "qpu-k8s.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qpu-k8s.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "qpu-k8s.labels" -}}
helm.sh/chart: {{ include "qpu-k8s.chart" .ctx }}
{{ include "qpu-k8s.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: qpu-k8s
{{- end }}

{{/* Labels a selector uses (stable across upgrades). */}}
{{- define "qpu-k8s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qpu-k8s.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The agents' image reference. */}}
{{- define "qpu-k8s.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The emulator image: same repository, "<tag>-emulator" unless overridden. */}}
{{- define "qpu-k8s.emulatorImage" -}}
{{- $repo := default .Values.image.repository .Values.emulator.image.repository }}
{{- $tag := default (printf "%s-emulator" (default .Chart.AppVersion .Values.image.tag)) .Values.emulator.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Names shared between templates. */}}
{{- define "qpu-k8s.operatorName" -}}{{ include "qpu-k8s.fullname" . }}-operator{{- end }}
{{- define "qpu-k8s.devicePluginName" -}}{{ include "qpu-k8s.fullname" . }}-device-plugin{{- end }}
{{- define "qpu-k8s.draName" -}}{{ include "qpu-k8s.fullname" . }}-dra{{- end }}
{{- define "qpu-k8s.emulatorName" -}}{{ include "qpu-k8s.fullname" . }}-emulator{{- end }}
{{/* The ConfigMap the operator writes and the node agents read (backends, no secrets). */}}
{{- define "qpu-k8s.nodeConfigName" -}}{{ include "qpu-k8s.fullname" . }}-node-config{{- end }}

{{/* Container securityContext for every container: read-only root, no privilege, no capabilities. */}}
{{- define "qpu-k8s.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Env every agent gets: logging, unbuffered output, a writable HOME. */}}
{{- define "qpu-k8s.commonEnv" -}}
- name: QPU_K8S_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: QPU_K8S_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
{{- /* Each qrmi resource object runs its own Tokio runtime with one worker thread per CPU
by default; its vendor calls are one blocking request at a time, so one thread each is
plenty (on a 64-core node every kept qrmi object would otherwise bring 64 threads). */}}
- name: TOKIO_WORKER_THREADS
  value: "1"
{{- /* glibc gives threads their own malloc arenas (up to 8 per CPU); two keep the agents'
short-lived worker threads from spreading the heap (measured: benchmarks/memory_bench.py). */}}
- name: MALLOC_ARENA_MAX
  value: "2"
{{- end }}

{{/* The Secret with the emulator's public fake credentials (emulator backends only). */}}
{{- define "qpu-k8s.emulatorSecretName" -}}qpu-emulator-credentials{{- end }}

{{/* Secrets the node agents mount: credentials.secrets, plus the emulator's when it makes backends. */}}
{{- define "qpu-k8s.credentialSecrets" -}}
{{- $secrets := .Values.credentials.secrets }}
{{- if and .Values.emulator.enabled .Values.emulator.backends.create }}
{{- $secrets = append $secrets (include "qpu-k8s.emulatorSecretName" .) | uniq }}
{{- end }}
{{- toJson $secrets }}
{{- end }}

{{/* Image pull secrets, when any. */}}
{{- define "qpu-k8s.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Fail early with a clear message when DRA is asked for on a cluster without resource.k8s.io/v1. */}}
{{- define "qpu-k8s.checkDRA" -}}
{{- if and .Values.dra.enabled (not (.Capabilities.APIVersions.Has "resource.k8s.io/v1")) }}
{{- fail "dra.enabled needs Kubernetes 1.34+ (resource.k8s.io/v1 is not served by this cluster): upgrade, or set dra.enabled=false and use the device plugin (devicePlugin.enabled=true)" }}
{{- end }}
{{- if and .Values.dra.acquireBeforeBind (not .Values.dra.claimStatus.enabled) }}
{{- fail "dra.acquireBeforeBind needs dra.claimStatus.enabled=true (the driver writes the binding condition in the claim's status.devices): enable it, or set dra.acquireBeforeBind=false" }}
{{- end }}
{{- end }}
