{{/* The name of this release's objects. */}}
{{- define "pgsidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgsidecar.selectorLabels" -}}
app.kubernetes.io/name: pgsidecar
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgsidecar.labels" -}}
{{ include "pgsidecar.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
pgsidecar.sidecar is the sidecar container, as one item of a container list. An application's
chart that has this chart as a dependency includes it with the values it gave this chart:

  initContainers:          # sidecar.native: true (Kubernetes 1.29+)
    {{- include "pgsidecar.sidecar" .Values.pgsidecar | nindent 4 }}

With sidecar.native false, include it under containers instead. The app connects to
localhost:<sidecar.proxyPort> with the same user and password as the sidecar's DATABASE_URL.
*/}}
{{- define "pgsidecar.sidecar" -}}
{{- $s := .sidecar -}}
- name: pgsidecar
  image: {{ printf "%s:%s" .image.repository (toString .image.tag) | quote }}
  imagePullPolicy: {{ .image.pullPolicy }}
  {{- if $s.native }}
  # A native sidecar: it starts, and its startup probe passes, before the app's containers
  # start, and it stops after they have exited.
  restartPolicy: Always
  {{- end }}
  args:
    - --web.listen-address=:{{ $s.metricsPort }}
    - --web.probe-listen-address=:{{ $s.probePort }}
    - --proxy.listen-address=:{{ $s.proxyPort }}
    - --log.format=json
    {{- range $s.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: DATABASE_URL
      valueFrom:
        secretKeyRef: {name: {{ .database.secretName | quote }}, key: {{ .database.secretKey | quote }}}
    - {name: DB_MAX_CONNECTIONS, value: {{ $s.maxConnections | quote }}}
    - {name: DB_MIN_CONNECTIONS, value: {{ $s.minConnections | quote }}}
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - {name: pgsidecar, containerPort: {{ $s.metricsPort }}}
    - {name: pgsidecar-probe, containerPort: {{ $s.probePort }}}
    - {name: pgsidecar-proxy, containerPort: {{ $s.proxyPort }}}
  startupProbe:
    # The proxy's port, not the database's health: the app starts once the proxy listens,
    # whether PostgreSQL is up yet or not.
    tcpSocket: {port: pgsidecar-proxy}
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    # /healthz never touches the database: a database outage must not restart pods.
    httpGet: {path: /healthz, port: pgsidecar-probe}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    # /readyz is 503 while the pool is unhealthy, so traffic drains from this pod.
    httpGet: {path: /readyz, port: pgsidecar-probe}
    periodSeconds: 5
    failureThreshold: 2
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
{{- end -}}
