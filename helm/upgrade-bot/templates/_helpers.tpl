{{/*
Names and labels, after `helm create`'s scaffold (helm/helm pkg/chart/v2/util/create.go).
*/}}
{{- define "upgrade-bot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "upgrade-bot.fullname" -}}
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

{{- define "upgrade-bot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "upgrade-bot.labels" -}}
helm.sh/chart: {{ include "upgrade-bot.chart" . }}
{{ include "upgrade-bot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "upgrade-bot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "upgrade-bot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: bot
{{- end }}

{{- define "upgrade-bot.redis.fullname" -}}
{{- printf "%s-redis" (include "upgrade-bot.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "upgrade-bot.redis.labels" -}}
helm.sh/chart: {{ include "upgrade-bot.chart" . }}
{{ include "upgrade-bot.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.internal.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "upgrade-bot.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "upgrade-bot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "upgrade-bot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "upgrade-bot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "upgrade-bot.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the Slack tokens: the user's, or the one this chart creates. */}}
{{- define "upgrade-bot.slackSecretName" -}}
{{- if .Values.slack.existingSecret }}
{{- .Values.slack.existingSecret }}
{{- else }}
{{- printf "%s-slack" (include "upgrade-bot.fullname" .) }}
{{- end }}
{{- end }}

{{/* The key of one Slack value in that Secret (the chart's own Secret uses the default names). */}}
{{- define "upgrade-bot.slackKey" -}}
{{- $root := index . 0 }}
{{- $which := index . 1 }}
{{- if $root.Values.slack.existingSecret }}
{{- index $root.Values.slack.existingSecretKeys $which }}
{{- else }}
{{- index (dict "botToken" "SLACK_BOT_TOKEN" "appToken" "SLACK_APP_TOKEN" "signingSecret" "SLACK_SIGNING_SECRET") $which }}
{{- end }}
{{- end }}

{{/* The URL of the in-chart Redis (its ClusterIP Service). */}}
{{- define "upgrade-bot.redis.url" -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "upgrade-bot.redis.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Where the config (and configFiles) are mounted; the image's UPGRADE_BOT_CONFIG agrees. */}}
{{- define "upgrade-bot.configDir" -}}
/etc/upgrade-bot
{{- end }}

{{/* The config file's text: a map from values rendered as YAML, or a string kept as it is. */}}
{{- define "upgrade-bot.configText" -}}
{{- if kindIs "string" .Values.config }}
{{- .Values.config }}
{{- else if .Values.config }}
{{- toYaml .Values.config }}
{{- else -}}
# No configuration was given in the chart's values (`config:`): the bot refuses to start
# ("groups: required key is missing"). See config.example.yaml in the project.
{}
{{- end }}
{{- end }}

{{/*
RBAC rules of the Kubernetes backend, one rule per row of the README's table
("Kubernetes backend: RBAC"); engine/backends/kube_api.py makes exactly these calls.
*/}}
{{- define "upgrade-bot.rbac.backendRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list"]
{{- end }}

{{- define "upgrade-bot.rbac.helmRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "create", "update", "patch", "delete"]
{{- range .Values.kubernetesBackend.helmResources }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: {{ toJson .resources }}
  verbs: ["get", "list", "create", "patch", "update", "delete"]
{{- end }}
{{- end }}

{{/* REDIS_URL and the optional REDIS_* of the contract (issue13-contract.md, "Redis"). */}}
{{- define "upgrade-bot.redisEnv" -}}
{{- $r := .Values.redis }}
{{- if $r.internal.enabled }}
- name: REDIS_URL
  value: {{ include "upgrade-bot.redis.url" . | quote }}
{{- else if $r.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $r.existingSecret }}
      key: {{ $r.existingSecretKey }}
{{- else if $r.url }}
- name: REDIS_URL
  value: {{ $r.url | quote }}
{{- end }}
{{- with $r.username }}
- name: REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with $r.password.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $r.password.key }}
{{- end }}
{{- with $r.sentinelPassword.existingSecret }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $r.sentinelPassword.key }}
{{- end }}
{{- if $r.tls.caSecret }}
- name: REDIS_TLS_CA_FILE
  value: /etc/upgrade-bot-redis/ca/ca.crt
{{- end }}
{{- if $r.tls.clientCertSecret }}
- name: REDIS_TLS_CERT_FILE
  value: /etc/upgrade-bot-redis/client/tls.crt
- name: REDIS_TLS_KEY_FILE
  value: /etc/upgrade-bot-redis/client/tls.key
{{- end }}
{{- if $r.tls.insecureSkipVerify }}
- name: REDIS_TLS_INSECURE_SKIP_VERIFY
  value: "true"
{{- end }}
{{- end }}

{{/* RBAC objects may live outside the release's namespace, or be cluster-scoped: their name
carries the release's namespace so that two releases of the same name never share them. */}}
{{- define "upgrade-bot.rbacName" -}}
{{- printf "%s-%s" (include "upgrade-bot.fullname" .) .Release.Namespace }}
{{- end }}
