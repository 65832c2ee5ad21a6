{{/* Names and labels. */}}
{{- define "codexgw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "codexgw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "codexgw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "codexgw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "codexgw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codexgw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "codexgw.componentLabels" -}}
{{ include "codexgw.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "codexgw.componentSelectorLabels" -}}
{{ include "codexgw.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "codexgw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "codexgw.secretName" -}}
{{- default (include "codexgw.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/*
The Secret's data (base64), computed once per render and kept in .Values so the release Secret and
the migration hook's copy hold the same generated values. Generated keys are read back from the
cluster when the Secret exists, so upgrades keep them.
*/}}
{{- define "codexgw.secretData" -}}
{{- if not (hasKey .Values "__secretData") -}}
{{- $existing := dict -}}
{{- with lookup "v1" "Secret" .Release.Namespace (include "codexgw.fullname" .) -}}
{{- $existing = .data | default dict -}}
{{- end -}}
{{- $data := dict -}}
{{- range $name, $value := .Values.secrets -}}
{{- if $value -}}
{{- $_ := set $data $name ($value | toString | b64enc) -}}
{{- end -}}
{{- end -}}
{{- $generated := .Values.generatedSecrets -}}
{{- if .Values.metrics.enabled -}}
{{- $generated = append $generated "CXG_METRICS_TOKEN" -}}
{{- end -}}
{{- range $name := $generated -}}
{{- if not (hasKey $data $name) -}}
{{- $_ := set $data $name (get $existing $name | default (randAlphaNum 64 | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__secretData" $data -}}
{{- end -}}
{{- toYaml (get .Values "__secretData") -}}
{{- end -}}

{{/* The ConfigMap's data: `config` plus the values the chart derives. */}}
{{- define "codexgw.configData" -}}
{{- range $name, $value := .Values.config -}}
{{- if hasKey $.Values.secrets $name -}}
{{- fail (printf "config.%s is a secret: set it under secrets (or in existingSecret)" $name) -}}
{{- end -}}
{{- $derived := dict "CXG_PORT" "gateway.port" "CODEXGW_DRAIN_TIMEOUT" "gateway.drainTimeoutSeconds" "CODEXGW_DRAIN_READINESS_DELAY" "gateway.drainReadinessDelaySeconds" -}}
{{- if hasKey $derived $name -}}
{{- fail (printf "config.%s is derived from %s: set that instead" $name (get $derived $name)) -}}
{{- end -}}
{{- end -}}
{{- $data := dict "CXG_PORT" (toString .Values.gateway.port) -}}
{{- range $name, $value := .Values.config -}}
{{- $_ := set $data $name (toString $value) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Checksum of the configuration, so pods roll when it changes. */}}
{{- define "codexgw.configChecksum" -}}
{{- $secret := .Values.existingSecret | default (include "codexgw.secretData" .) -}}
{{- printf "%s\n%s" (include "codexgw.configData" .) $secret | sha256sum -}}
{{- end -}}

{{/* Environment of every container; .suffix names the hook copies of the migration Job. */}}
{{- define "codexgw.envFrom" -}}
- configMapRef:
    name: {{ include "codexgw.fullname" .ctx }}{{ .suffix }}
- secretRef:
    name: {{ if .ctx.Values.existingSecret }}{{ .ctx.Values.existingSecret }}{{ else }}{{ include "codexgw.fullname" .ctx }}{{ .suffix }}{{ end }}
{{- end -}}

{{- define "codexgw.commonEnv" -}}
# The root filesystem is read-only; /tmp is an emptyDir.
- name: HOME
  value: /tmp
# Channel-layer messages between pods go directly to the pod's IP; Redis keeps the addresses and
# is the fallback.
- name: CODEXGW_LAYER_DIRECT_HOST
  value: 0.0.0.0
- name: CODEXGW_LAYER_DIRECT_ADVERTISE
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{- define "codexgw.volumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.volumes.dataSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.volumes.tmpSizeLimit }}
{{- end -}}

{{- define "codexgw.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.config.CODEXGW_DATA_DIR | default "/data" }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Pod-level fields shared by every workload. */}}
{{- define "codexgw.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Fails the render when the gateway could be killed while draining. */}}
{{- define "codexgw.validate" -}}
{{- $gw := .Values.gateway -}}
{{- if le (int $gw.terminationGracePeriodSeconds) (add (int $gw.preStopSleepSeconds) (int $gw.drainTimeoutSeconds) | int) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed gateway.preStopSleepSeconds + gateway.drainTimeoutSeconds (%d + %d): the kubelet would SIGKILL a draining gateway" (int $gw.terminationGracePeriodSeconds) (int $gw.preStopSleepSeconds) (int $gw.drainTimeoutSeconds)) -}}
{{- end -}}
{{- if ge (int $gw.drainReadinessDelaySeconds) (int $gw.drainTimeoutSeconds) -}}
{{- fail (printf "gateway.drainReadinessDelaySeconds (%d) must be below gateway.drainTimeoutSeconds (%d)" (int $gw.drainReadinessDelaySeconds) (int $gw.drainTimeoutSeconds)) -}}
{{- end -}}
{{- end -}}
