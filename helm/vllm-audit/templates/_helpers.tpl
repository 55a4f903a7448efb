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

{{/* "true" when the WAL lives on a PersistentVolumeClaim per pod (a StatefulSet). */}}
{{- define "vllm-audit.persistent" -}}
{{- $enabled := toString .Values.agent.wal.persistence.enabled -}}
{{- if .Values.agent.wal.existingClaim -}}
{{- else if eq $enabled "auto" -}}
{{- if not .Values.agent.kafka.bootstrap -}}true{{- end -}}
{{- else if eq $enabled "true" -}}true
{{- end -}}
{{- end -}}

{{- define "vllm-audit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vllm-audit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Values the schema cannot check (they relate two keys). */}}
{{- define "vllm-audit.checks" -}}
{{- if ge (int .Values.agent.shutdownTimeoutSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "agent.shutdownTimeoutSeconds (%v) must be below terminationGracePeriodSeconds (%v): the agent flushes after vLLM has stopped, within the same grace period" .Values.agent.shutdownTimeoutSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.agent.wal.existingClaim (gt (int .Values.replicaCount) 1) }}
{{- fail "agent.wal.existingClaim serves one replica only (two agents must never share a WAL); use agent.wal.persistence for a claim per pod" }}
{{- end }}
{{- if and .Values.agent.contentKeys.existingClaim (gt (int .Values.replicaCount) 1) }}
{{- fail "agent.contentKeys.existingClaim serves one replica only (two agents must never share a content key store); a claim per pod comes with agent.wal.persistence" }}
{{- end }}
{{- if and .Values.agent.wal.existingClaim (not .Values.agent.contentKeys.existingClaim) }}
{{- fail "agent.wal.existingClaim keeps the records beyond the pod: set agent.contentKeys.existingClaim too, a claim of its own for the keys their content is sealed under (kept out of the data's backups), or the content is unreadable after a restart" }}
{{- end }}
{{- end -}}

{{/* The witness (templates/witness.yaml): a name and selector of its own, so neither the
agent's workload nor its Service ever selects the witness's pod. */}}
{{- define "vllm-audit.witnessName" -}}
{{- printf "%s-witness" (include "vllm-audit.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm-audit.witnessSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-witness
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every witness the agents offer their checkpoints to: this chart's, then agent.witnesses. */}}
{{- define "vllm-audit.witnessUrls" -}}
{{- $urls := list -}}
{{- if .Values.witness.enabled -}}
{{- $urls = append $urls (printf "http://%s.%s.svc:%v" (include "vllm-audit.witnessName" .) .Release.Namespace .Values.witness.port) -}}
{{- end -}}
{{- range .Values.agent.witnesses -}}
{{- $urls = append $urls . -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The Secret holding the agents' record-log signing key (made by the chart unless named). */}}
{{- define "vllm-audit.signingKeySecret" -}}
{{- .Values.agent.signingKeySecret.name | default (printf "%s-signing-key" (include "vllm-audit.fullname" .)) -}}
{{- end -}}

{{/* The ConfigMap publishing its public key (only when the chart made the key). */}}
{{- define "vllm-audit.signingPublicKey" -}}
{{- printf "%s-signing-public-key" (include "vllm-audit.fullname" .) -}}
{{- end -}}

{{/* The fleet service (templates/fleet.yaml): a name and selector of its own, as the witness. */}}
{{- define "vllm-audit.fleetName" -}}
{{- printf "%s-fleet" (include "vllm-audit.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm-audit.fleetSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-fleet
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ConfigMap holding a detections' thresholds file, called with (list <detections
values> <the owner's name>): the one named in rulesConfigMap, the chart's own
(<owner>-detection-rules) when rules are given inline, nothing without either or while the
rules are off. */}}
{{- define "vllm-audit.detectionRulesConfigMap" -}}
{{- $d := index . 0 -}}
{{- if and $d.enabled $d.rulesConfigMap.name -}}
{{- $d.rulesConfigMap.name -}}
{{- else if and $d.enabled $d.rules -}}
{{- printf "%s-detection-rules" (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The thresholds file's key in that ConfigMap (the chart's own: YAML). */}}
{{- define "vllm-audit.detectionRulesKey" -}}
{{- $d := index . 0 -}}
{{- if $d.rulesConfigMap.name -}}{{ $d.rulesConfigMap.key }}{{- else -}}detection-rules.yaml{{- end -}}
{{- end -}}
