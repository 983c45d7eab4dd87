{{- define "peage.fullname" -}}
{{- if contains "peage" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-peage" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "peage.labels" -}}
app.kubernetes.io/name: peage
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "peage.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The environment every role shares: the configuration file and the operations port. */}}
{{- define "peage.env" -}}
- name: PEAGE_CONFIG
  value: /etc/peage/peage.toml
- name: PEAGE_METRICS__LISTEN
  value: {{ printf "0.0.0.0:%v" .Values.metricsPort | quote }}
- name: PEAGE_LOG
  value: info
{{- end -}}

{{/* PostgreSQL's URL (it holds a password), by reference: billing and migrate only. */}}
{{- define "peage.postgresEnv" -}}
- name: PEAGE_POSTGRES__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.name }}
      key: postgres-url
{{- end -}}

{{/* Liveness and readiness on the operations port. */}}
{{- define "peage.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 2
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 2
  failureThreshold: 60
{{- end -}}

{{- define "peage.volumeMounts" -}}
- name: config
  mountPath: /etc/peage
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "peage.volumes" -}}
- name: config
  configMap:
    name: {{ include "peage.fullname" . }}
- name: tmp
  emptyDir: {}
{{- end -}}
