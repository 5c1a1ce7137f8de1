{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart name it is used alone.
*/}}
{{- define "reconciler.fullname" -}}
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

{{- define "reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: reconciler
{{- end }}

{{- define "reconciler.labels" -}}
helm.sh/chart: {{ include "reconciler.chart" . }}
{{ include "reconciler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: openmeter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reconciler.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Replica count: SQLite allows exactly one process per database file.
*/}}
{{- define "reconciler.replicas" -}}
{{- if eq .Values.database.mode "sqlite" }}1{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
OpenMeter's chart (openmeterio/openmeter deploy/charts/openmeter, tag v1.0.0-beta.227,
templates/_helpers.tpl):
  openmeter.name     = default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-"
  openmeter.fullname = fullnameOverride | trunc 63 | trimSuffix "-"; else
                       (release name contains name) ? release | trunc 63 | trimSuffix "-"
                                                    : "<release>-<name>" | trunc 63 | trimSuffix "-"
  openmeter.componentName (list . "api")
                     = printf "%s-%s" (fullname | trunc (62 - len "api") | trimSuffix "-") "api"
and templates/service.yaml names the API Service with that componentName, port .Values.service.port
(default 80). The chart name is "openmeter".
*/}}
{{- define "reconciler.openmeter.name" -}}
{{- default "openmeter" .Values.openmeter.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reconciler.openmeter.fullname" -}}
{{- $om := .Values.openmeter }}
{{- if $om.fullnameOverride }}
{{- $om.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "openmeter" $om.nameOverride }}
{{- if contains $name $om.releaseName }}
{{- $om.releaseName | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" $om.releaseName $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "reconciler.openmeter.apiServiceName" -}}
{{- $component := "api" }}
{{- printf "%s-%s" (include "reconciler.openmeter.fullname" . | trunc (sub 62 (len $component) | int) | trimSuffix "-") $component | trimSuffix "-" }}
{{- end }}

{{- define "reconciler.openmeter.namespace" -}}
{{- default .Release.Namespace .Values.openmeter.namespace }}
{{- end }}

{{/*
Selector labels of OpenMeter's API pods (openmeter.componentSelectorLabels with "api").
*/}}
{{- define "reconciler.openmeter.apiSelectorLabels" -}}
app.kubernetes.io/name: {{ include "reconciler.openmeter.name" . }}
app.kubernetes.io/instance: {{ .Values.openmeter.releaseName }}
app.kubernetes.io/component: api
{{- end }}

{{- define "reconciler.openmeterUrl" -}}
{{- if .Values.openmeter.url }}
{{- .Values.openmeter.url | trimSuffix "/" }}
{{- else if .Values.openmeter.releaseName }}
{{- printf "http://%s.%s.svc:%d" (include "reconciler.openmeter.apiServiceName" .) (include "reconciler.openmeter.namespace" .) (.Values.openmeter.servicePort | int) }}
{{- else }}
{{- fail "openmeter: set openmeter.url (OpenMeter's API base URL) or openmeter.releaseName (the Helm release of OpenMeter's chart in the cluster)" }}
{{- end }}
{{- end }}

{{/*
Secret file names. pydantic-settings (secrets_dir) looks for a file named after the environment
variable of the field, env prefix included ("reconciler_admin_token"; matched case-insensitively),
not after the bare field name: tests/chart/test_settings_roundtrip.py loads them through
reconciler.settings.load_settings to prove it.
*/}}
{{- define "reconciler.secretFile" -}}
{{- printf "reconciler_%s" . }}
{{- end }}

{{- define "reconciler.secretsMountPath" -}}/run/secrets/reconciler{{- end }}

{{- define "reconciler.secretName" -}}
{{- include "reconciler.fullname" . }}
{{- end }}

{{/*
Entries of the chart-managed Secret as a dict {file name: value}; empty when nothing is managed.
*/}}
{{- define "reconciler.managedSecretData" -}}
{{- $data := dict }}
{{- $s := .Values.secrets }}
{{- if not $s.existingSecret }}
{{- if $s.webhookSecrets }}
{{- $_ := set $data (include "reconciler.secretFile" "webhook_secrets") (join " " $s.webhookSecrets) }}
{{- end }}
{{- if $s.adminToken }}
{{- $_ := set $data (include "reconciler.secretFile" "admin_token") $s.adminToken }}
{{- end }}
{{- if $s.eventsUrl }}
{{- $_ := set $data (include "reconciler.secretFile" "events_url") $s.eventsUrl }}
{{- end }}
{{- if $s.eventsSecret }}
{{- $_ := set $data (include "reconciler.secretFile" "events_secret") $s.eventsSecret }}
{{- end }}
{{- end }}
{{- $pg := .Values.database.postgresql }}
{{- if and (eq .Values.database.mode "postgresql") (not $pg.existingSecret) $pg.url }}
{{- $_ := set $data (include "reconciler.secretFile" "database_url") $pg.url }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Validation of combinations the schema cannot express. Included by the Deployment.
*/}}
{{- define "reconciler.validate" -}}
{{- $s := .Values.secrets }}
{{- if and $s.existingSecret (or $s.webhookSecrets $s.adminToken $s.eventsUrl $s.eventsSecret) }}
{{- fail "secrets: set either secrets.existingSecret or the inline values (webhookSecrets, adminToken, eventsUrl, eventsSecret), not both" }}
{{- end }}
{{- $pg := .Values.database.postgresql }}
{{- if eq .Values.database.mode "postgresql" }}
{{- if and (not $pg.url) (not $pg.existingSecret) }}
{{- fail "database.mode=postgresql needs the database URL: set database.postgresql.existingSecret (+ secretKey) or database.postgresql.url" }}
{{- end }}
{{- if and $pg.url $pg.existingSecret }}
{{- fail "database.postgresql: set either url or existingSecret, not both" }}
{{- end }}
{{- else if $pg.url }}
{{- fail "database.postgresql.url is set but database.mode is sqlite: set database.mode=postgresql" }}
{{- end }}
{{- end }}

{{- define "reconciler.terminationGracePeriodSeconds" -}}
{{- $drain := int (ceil .Values.config.drainSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 10 }}
{{- else if le (float64 .Values.terminationGracePeriodSeconds) (float64 .Values.config.drainSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than config.drainSeconds (%v), or the pod is killed mid-drain" .Values.terminationGracePeriodSeconds .Values.config.drainSeconds) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Sources of the projected "secrets" volume (a YAML list), each item mapped to its settings file.
*/}}
{{- define "reconciler.secretSources" -}}
{{- $sources := list }}
{{- $managed := include "reconciler.managedSecretData" . | fromYaml }}
{{- if $managed }}
{{- $items := list }}
{{- range $file := keys $managed | sortAlpha }}
{{- $items = append $items (dict "key" $file "path" $file) }}
{{- end }}
{{- $sources = append $sources (dict "secret" (dict "name" (include "reconciler.secretName" .) "items" $items)) }}
{{- end }}
{{- $s := .Values.secrets }}
{{- if $s.existingSecret }}
{{- $k := $s.existingSecretKeys }}
{{- $items := list }}
{{- range $field, $key := dict "webhook_secrets" $k.webhookSecrets "admin_token" $k.adminToken "events_url" $k.eventsUrl "events_secret" $k.eventsSecret }}
{{- if $key }}
{{- $items = append $items (dict "key" $key "path" (include "reconciler.secretFile" $field)) }}
{{- end }}
{{- end }}
{{- if $items }}
{{- $sources = append $sources (dict "secret" (dict "name" $s.existingSecret "items" $items)) }}
{{- end }}
{{- end }}
{{- $pg := .Values.database.postgresql }}
{{- if and (eq .Values.database.mode "postgresql") $pg.existingSecret }}
{{- $item := dict "key" $pg.secretKey "path" (include "reconciler.secretFile" "database_url") }}
{{- $sources = append $sources (dict "secret" (dict "name" $pg.existingSecret "items" (list $item))) }}
{{- end }}
{{- $om := .Values.openmeter.apiToken }}
{{- if $om.existingSecret }}
{{- $item := dict "key" $om.secretKey "path" (include "reconciler.secretFile" "openmeter_token") }}
{{- $sources = append $sources (dict "secret" (dict "name" $om.existingSecret "items" (list $item))) }}
{{- end }}
{{- toYaml $sources }}
{{- end }}
