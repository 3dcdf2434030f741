{{/*
Names. For release "switchboard" every name equals the operator's flag default, so an operator
run by hand finds the chart's Service, Secret and MutatingWebhookConfiguration; the Deployment
passes them explicitly anyway, so another release name stays consistent.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.fullname" -}}
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

{{/* The Deployment, its ServiceAccount, RBAC objects, PDB; also the Lease (--lease-name). */}}
{{- define "switchboard.operatorName" -}}
{{- printf "%s-operator" (include "switchboard.fullname" .) }}
{{- end }}

{{/* --webhook-service: the Service the API server calls; named in the certificate. */}}
{{- define "switchboard.webhookServiceName" -}}
{{- printf "%s-webhook" (include "switchboard.fullname" .) }}
{{- end }}

{{/* --webhook-secret: the certificate Secret in the release namespace. */}}
{{- define "switchboard.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "switchboard.fullname" .) }}
{{- end }}

{{/* --webhook-configuration: the MutatingWebhookConfiguration whose caBundle is kept current. */}}
{{- define "switchboard.webhookConfigurationName" -}}
{{- printf "%s-sidecar-injector" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.leaseName" -}}
{{- include "switchboard.operatorName" . }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The recommended labels, on every object the chart renders. */}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selects the operator pods. Deliberately unlike the labels the operator puts on what it creates
(managed-by: switchboard-operator), so neither selects the other's objects. */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "switchboard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "switchboard.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) }}
{{- end }}

{{/* cert-manager's Certificate for the webhook, and the issuer it uses. */}}
{{- define "switchboard.certificateName" -}}
{{- printf "%s-webhook" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.issuerName" -}}
{{- printf "%s-selfsigned" (include "switchboard.fullname" .) }}
{{- end }}
