{{/* Object name: fullnameOverride (default pss-operator). */}}
{{- define "pss-operator.fullname" -}}
{{- .Values.fullnameOverride | default "pss-operator" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The label every object of config/ carries, and the Pods' selector. */}}
{{- define "pss-operator.selectorLabels" -}}
app.kubernetes.io/name: pss-operator
{{- end -}}

{{- define "pss-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}
