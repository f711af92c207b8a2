{{/* Names and labels shared by every template. */}}

{{- define "millrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "millrace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "millrace.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "millrace.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "millrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "millrace.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "millrace.labels" -}}
{{ include "millrace.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "millrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "millrace.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "millrace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Pod and container security of every pod the chart makes: the "restricted" standard. */}}
{{- define "millrace.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "millrace.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/*
What the operator does in a namespace it runs Dataflows in. tests/operator_tests/test_rbac.py
derives these from the operator's own requests and fails when they differ.
*/}}
{{- define "millrace.namespacedRules" -}}
- apiGroups: [millrace.dev]
  resources: [dataflows]
  verbs: [list, watch, patch]
- apiGroups: [millrace.dev]
  resources: [dataflows/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin allows only to those who may update the owner's finalizers.
- apiGroups: [millrace.dev]
  resources: [dataflows/finalizers]
  verbs: [update]
# Children are written with server-side apply: a PATCH, which needs create too when the child
# does not exist yet. Jobs and claims are deleted when the pod template or the volumes change.
# Every child is watched (list, watch): the operator reconciles from what its watches keep in
# memory and reads nothing while nothing changes.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch]
# delete: a flow's ConfigMap goes when the flow comes from a module instead of code.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# get: a cluster key the watch has not shown yet is read rather than made anew.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* With standby replicas: kopf's peering object, watched and renewed by every replica. */}}
{{- define "millrace.peeringRules" -}}
{{- if gt (int .Values.operator.replicas) 1 }}
- apiGroups: [kopf.dev]
  resources: [{{ if .Values.watchNamespaces }}kopfpeerings{{ else }}clusterkopfpeerings{{ end }}]
  verbs: [list, watch, patch]
{{- end }}
{{- end }}

{{/* Where `helm test` runs its Dataflow: the release namespace, if the operator watches it. */}}
{{- define "millrace.testNamespace" -}}
{{- if or (not .Values.watchNamespaces) (has .Release.Namespace .Values.watchNamespaces) }}
{{- .Release.Namespace }}
{{- else }}
{{- first .Values.watchNamespaces }}
{{- end }}
{{- end }}
