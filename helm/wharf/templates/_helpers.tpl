{{- define "wharf.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wharf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wharf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wharf.labels" -}}
{{ include "wharf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wharf.image" -}}
{{- $default := .Chart.AppVersion -}}
{{- if .Values.image.variant -}}
{{- $default = printf "%s-%s" .Chart.AppVersion .Values.image.variant -}}
{{- end -}}
{{- $tag := .Values.image.tag | default $default -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Model configs as served: with gpu.enabled every model runs on KIND_GPU with the
     per-instance budget, and the budgets on the card must fit its memory. */}}
{{- define "wharf.modelConfigs" -}}
{{- $out := dict -}}
{{- $gpu := .Values.gpu -}}
{{- range $name, $config := .Values.modelConfigs -}}
{{- $c := deepCopy $config -}}
{{- if $gpu.enabled -}}
{{- $_ := set $c "backend" "onnxruntime" -}}
{{- $_ := set $c "instance_group" (list (dict "kind" "KIND_GPU" "gpus" (list 0) "count" $gpu.instancesPerModel "memory_budget" (printf "%dMiB" (int $gpu.memoryBudgetPerInstanceMiB)))) -}}
{{- end -}}
{{- $_ := set $out $name $c -}}
{{- end -}}
{{- if $gpu.enabled -}}
{{- $total := mul (len $out) (int $gpu.instancesPerModel) (int $gpu.memoryBudgetPerInstanceMiB) -}}
{{- if gt (int $total) (int $gpu.cardMemoryMiB) -}}
{{- fail (printf "gpu: %d models x %d instances x %dMiB = %dMiB does not fit the card's %dMiB (gpu.cardMemoryMiB)" (len $out) (int $gpu.instancesPerModel) (int $gpu.memoryBudgetPerInstanceMiB) (int $total) (int $gpu.cardMemoryMiB)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
