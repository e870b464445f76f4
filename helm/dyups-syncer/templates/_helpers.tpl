{{/* Names and labels. */}}
{{- define "dyups-syncer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dyups-syncer.fullname" -}}
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

{{/* Cluster-scoped names must not collide between namespaces. */}}
{{- define "dyups-syncer.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "dyups-syncer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dyups-syncer.component" -}}
{{- if eq .Values.mode "sidecar" -}}dyups-proxy{{- else -}}syncer{{- end -}}
{{- end -}}

{{- define "dyups-syncer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dyups-syncer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "dyups-syncer.component" . }}
{{- end -}}

{{- define "dyups-syncer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dyups-syncer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dyups-syncer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dyups-syncer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dyups-syncer.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dyups-syncer.leaseName" -}}
{{- default (include "dyups-syncer.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "dyups-syncer.proxiesNamespace" -}}
{{- default .Release.Namespace .Values.proxies.kubernetes.namespace -}}
{{- end -}}

{{/* Which parts are on. */}}
{{- define "dyups-syncer.central" -}}{{- if eq .Values.mode "central" -}}true{{- end -}}{{- end -}}
{{- define "dyups-syncer.leaderElection" -}}
{{- if and (eq .Values.mode "central") .Values.leaderElection.enabled -}}true{{- end -}}
{{- end -}}
{{- define "dyups-syncer.lease" -}}
{{- if and (include "dyups-syncer.leaderElection" .) (eq .Values.leaderElection.backend "kubernetes") -}}true{{- end -}}
{{- end -}}
{{/* Sharded leader election: one Lease per shard, plus a membership Lease per replica. */}}
{{- define "dyups-syncer.sharded" -}}
{{- if and (include "dyups-syncer.lease" .) (gt (int .Values.leaderElection.shards) 1) -}}true{{- end -}}
{{- end -}}
{{- define "dyups-syncer.consulDiscovery" -}}
{{- if and (eq .Values.mode "central") .Values.proxies.consul.enabled -}}true{{- end -}}
{{- end -}}
{{- define "dyups-syncer.discovery" -}}
{{- if and (eq .Values.mode "central") .Values.proxies.kubernetes.enabled -}}true{{- end -}}
{{- end -}}
{{- define "dyups-syncer.usesConsul" -}}
{{- $consul := eq .Values.source.type "consul" -}}
{{- range .Values.extraSources -}}{{- if eq (toString .type) "consul" -}}{{- $consul = true -}}{{- end -}}{{- end -}}
{{- if include "dyups-syncer.consulDiscovery" . -}}{{- $consul = true -}}{{- end -}}
{{- if and (include "dyups-syncer.leaderElection" .) (eq .Values.leaderElection.backend "consul") -}}{{- $consul = true -}}{{- end -}}
{{- if $consul -}}true{{- end -}}
{{- end -}}

{{/* Values that cannot work together: fail with a message that says why. */}}
{{- define "dyups-syncer.validate" -}}
{{- if eq .Values.mode "central" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: several replicas would write to the same proxies. Enable leaderElection or set replicas: 1." (int .Values.replicas)) -}}
{{- end -}}
{{- if and (not .Values.proxies.kubernetes.enabled) (not .Values.proxies.consul.enabled) (not .Values.proxies.static) -}}
{{- fail "no proxies: enable proxies.kubernetes or proxies.consul, or list proxies.static (or use mode: sidecar)" -}}
{{- end -}}
{{- if and .Values.proxies.consul.enabled (not .Values.proxies.consul.service) -}}
{{- fail "proxies.consul.enabled: set proxies.consul.service, the Consul service of the proxies" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.proxies.consul.enabled (not .Values.networkPolicy.extraEgress) -}}
{{- fail "networkPolicy: proxies discovered in Consul can be anywhere; describe them (addresses, dyups port) in networkPolicy.extraEgress, or set networkPolicy.enabled: false" -}}
{{- end -}}
{{- if and (gt (int .Values.leaderElection.shards) 1) (ne .Values.leaderElection.backend "kubernetes") -}}
{{- fail "leaderElection.shards > 1 needs leaderElection.backend: kubernetes (one Lease per shard); the consul backend holds a single lock" -}}
{{- end -}}
{{- if and (gt (int .Values.leaderElection.shards) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "leaderElection.shards > 1 needs leaderElection.enabled: true (the shards are Leases)" -}}
{{- end -}}
{{- if and .Values.snapshot.persistence.enabled (gt (int .Values.replicas) 1) -}}
{{- fail "snapshot.persistence.enabled needs replicas: 1 (a ReadWriteOnce claim cannot be shared); with leader election the emptyDir is enough, the leader publishes what it owns on the Lease" -}}
{{- end -}}
{{- else -}}
{{- if not .Values.sidecar.proxy.image.repository -}}
{{- fail "mode sidecar: set sidecar.proxy.image.repository to an nginx built with ngx_http_dyups_module" -}}
{{- end -}}
{{- if .Values.proxies.static -}}
{{- fail "mode sidecar drives only the nginx in its own pod: proxies.static must be empty" -}}
{{- end -}}
{{- if and .Values.snapshot.persistence.enabled (gt (int .Values.sidecar.proxy.replicas) 1) -}}
{{- fail "snapshot.persistence.enabled needs sidecar.proxy.replicas: 1 (a ReadWriteOnce claim cannot be shared)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The daemon's configuration, built from the values. */}}
{{- define "dyups-syncer.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $type := .Values.source.type -}}
{{- $src := dict -}}
{{- if eq $type "kubernetes" -}}
{{- $src = deepCopy .Values.source.kubernetes -}}
{{- else if eq $type "consul" -}}
{{- $src = deepCopy .Values.source.consul -}}
{{- else -}}
{{- $src = omit .Values.source.file "upstreams" | deepCopy -}}
{{- $_ := set $src "path" "upstreams.yaml" -}}
{{- end -}}
{{- $_ := set $src "type" $type -}}
{{- $sources := list $src -}}
{{- range .Values.extraSources -}}{{- $sources = append $sources (deepCopy .) -}}{{- end -}}
{{- $_ := set $cfg "sources" $sources -}}
{{- $settings := .Values.proxies.settings | default dict -}}
{{- $proxies := dict -}}
{{- if eq .Values.mode "sidecar" -}}
{{- $local := dict "url" (printf "http://127.0.0.1:%d" (int .Values.sidecar.dyupsPort)) "name" "local" "dump_path" "/var/lib/dyups-dump/upstreams.conf" -}}
{{- $_ := set $proxies "static" (list (merge $local (deepCopy $settings))) -}}
{{- else -}}
{{- if .Values.proxies.static -}}
{{- $static := list -}}
{{- range .Values.proxies.static -}}{{- $static = append $static (merge (deepCopy .) (deepCopy $settings)) -}}{{- end -}}
{{- $_ := set $proxies "static" $static -}}
{{- end -}}
{{- if .Values.proxies.kubernetes.enabled -}}
{{- $k := omit .Values.proxies.kubernetes "enabled" | deepCopy -}}
{{- $_ := set $k "namespace" (include "dyups-syncer.proxiesNamespace" .) -}}
{{- $_ := set $proxies "kubernetes" (merge $k (deepCopy $settings)) -}}
{{- end -}}
{{- if .Values.proxies.consul.enabled -}}
{{- $c := omit .Values.proxies.consul "enabled" | deepCopy -}}
{{- $_ := set $proxies "consul" (merge $c (deepCopy $settings)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "proxies" $proxies -}}
{{- if include "dyups-syncer.leaderElection" . -}}
{{- $le := dict "enabled" true "backend" .Values.leaderElection.backend "lease_duration" .Values.leaderElection.leaseDuration "renew_deadline" .Values.leaderElection.renewDeadline "retry_period" .Values.leaderElection.retryPeriod -}}
{{- if eq .Values.leaderElection.backend "kubernetes" -}}
{{- $_ := set $le "lease_name" (include "dyups-syncer.leaseName" .) -}}
{{- $_ := set $le "namespace" .Release.Namespace -}}
{{- if include "dyups-syncer.sharded" . -}}
{{- $_ := set $le "shards" (int .Values.leaderElection.shards) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $le "consul" (deepCopy .Values.leaderElection.consul) -}}
{{- end -}}
{{- $_ := set $cfg "leader_election" $le -}}
{{- end -}}
{{- $_ := set $cfg "snapshot_path" "/var/lib/dyups-syncer/snapshot.json" -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.metricsPort)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The dyups-syncer container (central Deployment, or the sidecar). */}}
{{- define "dyups-syncer.container" -}}
- name: dyups-syncer
  image: {{ include "dyups-syncer.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run", "-c", "/etc/dyups-syncer/config.yaml"]
  env:
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if .Values.consulTokenSecret.name }}
    - name: CONSUL_HTTP_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .Values.consulTokenSecret.name }}
          key: {{ .Values.consulTokenSecret.key }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: {{ .Values.metricsPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/dyups-syncer
      readOnly: true
    - name: snapshot
      mountPath: /var/lib/dyups-syncer
    - name: tmp
      mountPath: /tmp
    {{- if eq .Values.mode "sidecar" }}
    - name: dump
      mountPath: /var/lib/dyups-dump
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "dyups-syncer.volumes" -}}
- name: config
  configMap:
    name: {{ include "dyups-syncer.fullname" . }}
- name: snapshot
  {{- if .Values.snapshot.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "dyups-syncer.fullname" . }}-snapshot
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.snapshot.sizeLimit }}
  {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dyups-syncer.podScheduling" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
