{{- define "levy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "levy.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "levy.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "levy.config" -}}
{{- if .Values.config -}}
{{ .Values.config }}
{{- else -}}
{{ .Files.Get "files/levy.yaml" }}
{{- end -}}
{{- end -}}

{{- define "levy.secretName" -}}
{{- printf "%s-secrets" (include "levy.fullname" .) -}}
{{- end -}}

{{- define "levy.env" -}}
- name: LEVY_SETTLER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.settlerKey.existingSecret | default (include "levy.secretName" .) }}
      key: settler-key
- name: LEVY_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.adminToken.existingSecret | default (include "levy.secretName" .) }}
      key: admin-token
{{- end -}}

{{- define "levy.mounts" -}}
- {name: config, mountPath: /etc/levy, readOnly: true}
- {name: journal, mountPath: /var/lib/levy}
- {name: run, mountPath: /run/levy}
{{- end -}}
