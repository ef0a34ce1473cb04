{{/* Names, labels and the few decisions several templates share. */}}

{{- define "icc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "icc.fullname" -}}
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

{{/* A name derived from the fullname: (list . "suffix"). */}}
{{- define "icc.component" -}}
{{- printf "%s-%s" (include "icc.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "icc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "icc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: image-clone-controller
{{- end }}

{{- define "icc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "icc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component's pods: (list . "bridge"). */}}
{{- define "icc.componentSelector" -}}
{{ include "icc.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "icc.configMapName" -}}{{ include "icc.component" (list . "config") }}{{- end }}
{{- define "icc.bridgeName" -}}{{ include "icc.component" (list . "bridge") }}{{- end }}
{{- define "icc.functionName" -}}{{ include "icc.component" (list . "function") }}{{- end }}

{{- define "icc.bridgeServiceAccount" -}}
{{- default (include "icc.bridgeName" .) .Values.bridge.serviceAccount.name }}
{{- end }}

{{- define "icc.functionServiceAccount" -}}
{{- if .Values.function.serviceAccount.create }}
{{- default (include "icc.functionName" .) .Values.function.serviceAccount.name }}
{{- else }}
{{- .Values.function.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "icc.sharedSecretName" -}}
{{- default (include "icc.component" (list . "secrets")) .Values.sharedSecret.existingSecret }}
{{- end }}

{{/* The function runs in this cluster unless function.externalUrl names it elsewhere. */}}
{{- define "icc.functionInCluster" -}}
{{- if .Values.function.externalUrl }}false{{ else }}true{{ end }}
{{- end }}

{{/* The registry credentials' Secret the function mounts: an existing one, one the chart creates, or none. */}}
{{- define "icc.registrySecretName" -}}
{{- $credentials := .Values.registryCredentials }}
{{- if $credentials.existingSecret }}
{{- $credentials.existingSecret }}
{{- else if or $credentials.dockerConfigJson $credentials.username }}
{{- include "icc.component" (list . "registry") }}
{{- end }}
{{- end }}

{{- define "icc.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "icc.functionUrl" -}}
{{- if .Values.function.externalUrl }}
{{- .Values.function.externalUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:8080" (include "icc.functionName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "icc.callbackUrl" -}}
{{- if .Values.bridge.callbackUrl }}
{{- .Values.bridge.callbackUrl }}
{{- else if not .Values.function.externalUrl }}
{{- printf "http://%s.%s.svc:8080/callback" (include "icc.bridgeName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Whether a Prometheus-operator object is rendered: (list <enabled value> .). null: when the cluster
serves monitoring.coreos.com/v1; true/false: always/never.
*/}}
{{- define "icc.monitoringEnabled" -}}
{{- $enabled := index . 0 }}
{{- $root := index . 1 }}
{{- if kindIs "invalid" $enabled }}
{{- $root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}
{{- else }}
{{- $enabled }}
{{- end }}
{{- end }}

{{/*
The pod template annotations that roll a Deployment when its configuration changes: the rendered
ConfigMap, and the values the Secrets come from (not the rendered Secrets: a generated value would
make every render differ).
*/}}
{{- define "icc.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ list .Values.sharedSecret .Values.registryCredentials | toJson | sha256sum }}
{{- end }}

{{/* A PodDisruptionBudget's limit: minAvailable when set, else maxUnavailable. */}}
{{- define "icc.disruptionLimit" -}}
{{- if not (kindIs "invalid" .minAvailable) }}
minAvailable: {{ .minAvailable }}
{{- else }}
maxUnavailable: {{ .maxUnavailable }}
{{- end }}
{{- end }}
