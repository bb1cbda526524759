{{/*
app.kubernetes.io/name of the operator's objects. Not the chart name: the operator labels
the objects of every GeoDatabase app.kubernetes.io/name=geodb and
app.kubernetes.io/instance=<GeoDatabase name>, so a release named like a GeoDatabase in
the same namespace would otherwise select that database's pods.
*/}}
{{- define "geodb.name" -}}
geodb-operator
{{- end }}

{{/*
Base name of the release's objects: `geodb-operator` for a release named geodb, as in
config/, otherwise <release>-geodb-operator (at most 63 characters).
*/}}
{{- define "geodb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-operator" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "geodb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "geodb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "geodb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "geodb.labels" -}}
{{ include "geodb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "geodb.chart" . }}
{{- end }}

{{/*
The documents of files/rbac-role.yaml (a copy of config/rbac/role.yaml, kept identical by
`make chart-rbac` and checked by charts/test-chart.sh), as a list of maps. The chart takes
the rules of its ClusterRole and leader Role from there, so that they are config/'s rules.
*/}}
{{- define "geodb.rbacDocs" -}}
{{- $docs := list -}}
{{- range $raw := regexSplit "(?m)^---[ \\t]*$" (.Files.Get "files/rbac-role.yaml") -1 -}}
{{- $doc := fromYaml $raw -}}
{{- if $doc.Error -}}
{{- fail (printf "files/rbac-role.yaml: %s" $doc.Error) -}}
{{- end -}}
{{- if $doc.kind -}}
{{- $docs = append $docs $doc -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "docs" $docs) -}}
{{- end }}

{{/* geodb.rbacRules (list root kind): the rules of the one object of that kind. */}}
{{- define "geodb.rbacRules" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $found := list -}}
{{- range (include "geodb.rbacDocs" $root | fromYaml).docs -}}
{{- if eq .kind $kind -}}
{{- $found = append $found . -}}
{{- end -}}
{{- end -}}
{{- if ne (len $found) 1 -}}
{{- fail (printf "files/rbac-role.yaml must hold exactly one %s, found %d" $kind (len $found)) -}}
{{- end -}}
{{- if not (index $found 0).rules -}}
{{- fail (printf "the %s in files/rbac-role.yaml has no rules" $kind) -}}
{{- end -}}
{{- toYaml (index $found 0).rules -}}
{{- end }}

{{/*
geodb.namespacedRules (list root): the ClusterRole's rules as a namespaced Role can hold
them. Dropped: reads of cluster-scoped objects (the CRD and StorageClasses; the operator
skips those checks when RBAC forbids them). Kept of the instances' ClusterRole: "bind"
only, which a Role grants for RoleBindings in its own namespace.
*/}}
{{- define "geodb.namespacedRules" -}}
{{- $rules := list -}}
{{- range (include "geodb.rbacRules" (list (index . 0) "ClusterRole") | fromYamlArray) -}}
{{- if has "clusterroles" .resources -}}
{{- $rules = append $rules (merge (dict "verbs" (list "bind")) (omit . "verbs")) -}}
{{- else if not (or (has "customresourcedefinitions" .resources) (has "storageclasses" .resources)) -}}
{{- $rules = append $rules . -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}
