{{- define "vllm-audit.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vllm-audit.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vllm-audit.labels" -}}
{{ include "vllm-audit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vllm-audit.socketPath" -}}
{{- printf "%s/ingest.sock" (trimSuffix "/" .Values.audit.socketDir) -}}
{{- end -}}

{{/* The HMAC key is required whenever a capture policy hashes. */}}
{{- define "vllm-audit.needsHmacKey" -}}
{{- $c := .Values.audit.capture -}}
{{- if or (eq $c.prompt "hmac") (eq $c.output "hmac") (eq $c.clientIp "hmac") -}}true{{- end -}}
{{- end -}}
