{{/* Name prefix of every resource: the release name unless fullnameOverride is set. Kept
short enough that "<prefix>-control-plane" fits the 63-character limit. */}}
{{- define "duet.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- end }}

{{- define "duet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "duet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Call with (dict "root" $ "component" "decode"). */}}
{{- define "duet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "duet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: duet
{{- end }}

{{- define "duet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "duet.controlPlaneAddress" -}}
{{- printf "%s-control-plane:%d" (include "duet.fullname" .) (int .Values.controlPlane.grpcPort) }}
{{- end }}

{{- define "duet.gatewayUrl" -}}
{{- printf "http://%s-control-plane:%d" (include "duet.fullname" .) (int .Values.controlPlane.httpPort) }}
{{- end }}

{{- define "duet.apiKeySecretName" -}}
{{- default (printf "%s-api-keys" (include "duet.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "duet.hasApiKeys" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{/* DUET_REDIS_URL: the bundled Redis Service, or the URL from the external Secret. */}}
{{- define "duet.redisUrlEnv" -}}
- name: DUET_REDIS_URL
{{- if eq .Values.redis.mode "external" }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.secretKey }}
{{- else }}
  value: {{ printf "redis://%s-redis:%d/0" (include "duet.fullname" .) (int .Values.redis.bundled.port) | quote }}
{{- end }}
{{- end }}

{{- define "duet.prefixCacheEnv" -}}
{{- $c := .Values.prefixCache }}
- name: DUET_PREFIX_CACHE
  value: {{ ternary "on" "off" $c.enabled | quote }}
- name: DUET_PREFIX_BLOCK_SIZE
  value: {{ $c.blockSize | quote }}
- name: DUET_PREFIX_SNAPSHOTS
  value: {{ $c.snapshots | quote }}
- name: DUET_PREFIX_L1_MB
  value: {{ $c.l1Mb | quote }}
- name: DUET_PREFIX_L2_MB
  value: {{ $c.l2Mb | quote }}
- name: DUET_PREFIX_L3
  value: {{ ternary "on" "off" $c.l3 | quote }}
- name: DUET_PREFIX_L3_TTL_S
  value: {{ $c.l3TtlS | quote }}
- name: DUET_PREFIX_INDEX_TTL_S
  value: {{ $c.indexTtlS | quote }}
{{- end }}

{{- define "duet.apiKeysEnv" -}}
{{- if include "duet.hasApiKeys" . }}
- name: DUET_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "duet.apiKeySecretName" . }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- end }}

{{/* Checksums roll the pods when settings or keys change. */}}
{{- define "duet.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/api-keys: {{ include (print .Template.BasePath "/secret-api-keys.yaml") . | sha256sum }}
{{- end }}

{{- define "duet.modelVolume" -}}
{{- $m := .Values.model -}}
- name: model
{{- if eq $m.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
  hostPath:
    path: {{ $m.hostPath.path }}
    type: {{ $m.hostPath.type }}
{{- else if eq $m.image.mode "volume" }}
  image:
    reference: {{ default (include "duet.image" .) $m.image.reference }}
    pullPolicy: {{ $m.image.pullPolicy }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "duet.modelMount" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath }}
  subPath: {{ .Values.model.pvc.subPath }}
{{- end }}
{{- end }}

{{/* An init container that fills the emptyDir from the model image (source image, mode copy). */}}
{{- define "duet.modelCopyInit" -}}
{{- $m := .Values.model -}}
{{- if and (eq $m.source "image") (eq $m.image.mode "copy") }}
initContainers:
  - name: copy-model
    image: {{ default (include "duet.image" .) $m.image.reference }}
    imagePullPolicy: {{ $m.image.pullPolicy }}
    command: ["sh", "-c", 'mkdir -p "$1" && cp -a "$0/." "$1/"']
    args: [{{ trimSuffix "/" $m.image.copyFrom | quote }}, {{ $m.path | quote }}]
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: model
        mountPath: {{ $m.mountPath }}
{{- end }}
{{- end }}

{{/* Checks the schema cannot express; each fails the render with a message naming the key. */}}
{{- define "duet.validate" -}}
{{- $v := .Values -}}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" $v.model.mountPath)) $v.model.path) }}
{{- fail (printf "model.path %q must lie under model.mountPath %q" $v.model.path $v.model.mountPath) }}
{{- end }}
{{- range $pool := list "prefill" "decode" }}
{{- $p := index $v $pool }}
{{- if and $p.hpa.enabled $v.autoscaler.enabled }}
{{- fail (printf "%s.hpa.enabled and autoscaler.enabled both scale the %s Deployment: enable one" $pool $pool) }}
{{- end }}
{{- if ge (int $p.preStopSleepSeconds) (int $p.terminationGracePeriodSeconds) }}
{{- fail (printf "%s.preStopSleepSeconds (%d) must be less than %s.terminationGracePeriodSeconds (%d)" $pool (int $p.preStopSleepSeconds) $pool (int $p.terminationGracePeriodSeconds)) }}
{{- end }}
{{- $gpus := int (index ($p.resources.limits | default dict) "nvidia.com/gpu" | default 0) }}
{{- if and (eq $v.runtime.device "cuda") (lt $gpus (int $p.tensorParallelSize)) }}
{{- fail (printf "%s.tensorParallelSize is %d but %s.resources.limits[\"nvidia.com/gpu\"] is %d: give each worker at least one GPU per rank" $pool (int $p.tensorParallelSize) $pool $gpus) }}
{{- end }}
{{- if and (eq $v.runtime.device "cpu") (has $p.transferBackend (list "cuda_ipc" "nccl")) }}
{{- fail (printf "%s.transferBackend %q needs GPUs but runtime.device is cpu: use tcp or auto" $pool $p.transferBackend) }}
{{- end }}
{{- if and (eq $v.runtime.device "cpu") (gt $gpus 0) }}
{{- fail (printf "%s.resources.limits[\"nvidia.com/gpu\"] is %d but runtime.device is cpu: set it to null" $pool $gpus) }}
{{- end }}
{{- if and (eq $v.runtime.device "cpu") (gt (int $p.tensorParallelSize) 1) }}
{{- fail (printf "%s.tensorParallelSize must be 1 when runtime.device is cpu" $pool) }}
{{- end }}
{{- end }}
{{- end }}

{{/* gRPC health probes (grpc.health.v1, overall server status) on one port.
Call with (dict "probes" .probes "port" N). */}}
{{- define "duet.grpcProbes" -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  grpc:
    port: {{ int $.port }}
  {{- toYaml (index $.probes $kind) | nindent 2 }}
{{- end }}
{{- end }}

{{/* A pool's resources plus its RDMA device when enabled. Call with the pool's values. */}}
{{- define "duet.workerResources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if .rdma.enabled }}
{{- $limits := $res.limits | default dict }}
{{- $_ := set $limits .rdma.resourceName (int .rdma.count) }}
{{- $_ := set $res "limits" $limits }}
{{- if $res.requests }}
{{- $_ := set $res.requests .rdma.resourceName (int .rdma.count) }}
{{- end }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* The pool's affinity, with a required node term on nvidia.com/gpu.product when gpuProducts
is set (merged into any nodeAffinity given). Call with the pool's values. */}}
{{- define "duet.workerAffinity" -}}
{{- $aff := deepCopy (.affinity | default dict) }}
{{- if .gpuProducts }}
{{- $expr := dict "key" "nvidia.com/gpu.product" "operator" "In" "values" .gpuProducts }}
{{- $node := $aff.nodeAffinity | default dict }}
{{- $req := $node.requiredDuringSchedulingIgnoredDuringExecution | default dict }}
{{- $terms := $req.nodeSelectorTerms | default (list (dict "matchExpressions" list)) }}
{{- $merged := list }}
{{- range $terms }}
{{- $term := deepCopy . }}
{{- $_ := set $term "matchExpressions" (append ($term.matchExpressions | default list) $expr) }}
{{- $merged = append $merged $term }}
{{- end }}
{{- $_ := set $req "nodeSelectorTerms" $merged }}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $req }}
{{- $_ := set $aff "nodeAffinity" $node }}
{{- end }}
{{- if $aff }}
affinity:
  {{- toYaml $aff | nindent 2 }}
{{- end }}
{{- end }}
