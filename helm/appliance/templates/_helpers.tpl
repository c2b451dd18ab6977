{{- define "appliance.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "appliance.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "appliance.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "appliance.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "appliance.databaseSecret" -}}
{{- if .Values.database.bundled -}}{{ include "appliance.fullname" . }}-database{{- else -}}{{ .Values.database.external.existingSecret }}{{- end -}}
{{- end -}}

{{- define "appliance.brokerSecret" -}}
{{- if .Values.broker.bundled -}}{{ include "appliance.fullname" . }}-broker{{- else -}}{{ .Values.broker.external.existingSecret }}{{- end -}}
{{- end -}}

{{/* Pod-level security: a fixed non-root user, no service account token, seccomp. */}}
{{- define "appliance.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "appliance.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* The container running one appliance role: image, settings, secrets, writable /tmp. */}}
{{- define "appliance.container" -}}
- name: {{ .role }}
  image: {{ include "appliance.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args: {{ toJson .args }}
  env:
    - name: APPLIANCE_CONFIG
      value: /etc/appliance/appliance.yaml
    - name: APPLIANCE_DATABASE__URL
      valueFrom:
        secretKeyRef: {name: {{ include "appliance.databaseSecret" .root }}, key: url}
    - name: APPLIANCE_QUEUE__BROKER_URL
      valueFrom:
        secretKeyRef: {name: {{ include "appliance.brokerSecret" .root }}, key: url}
  {{- include "appliance.containerSecurity" . | nindent 2 }}
  volumeMounts:
    - {name: settings, mountPath: /etc/appliance, readOnly: true}
    - {name: tmp, mountPath: /tmp}
    - {name: data, mountPath: /var/lib/appliance}
    {{- range .mounts }}
    - {{ toJson . }}
    {{- end }}
{{- end -}}

{{- define "appliance.volumes" -}}
- name: settings
  configMap:
    name: {{ include "appliance.fullname" . }}-settings
- name: tmp
  emptyDir: {medium: Memory, sizeLimit: 256Mi}
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.storage.existingClaim | default (printf "%s-data" (include "appliance.fullname" .)) }}
{{- end -}}
