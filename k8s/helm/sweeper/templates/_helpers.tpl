{{/* The release's name for its objects: the release name when it holds the chart's name. */}}
{{- define "sweeper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Helm's recommended labels. 52 characters: a CronJob's Jobs add 11. */}}
{{- define "sweeper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sweeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sweeper.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sweeper.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Seconds of a compact duration (90s, 10m, 1h30m; "0" is 0). */}}
{{- define "sweeper.seconds" -}}
{{- $d := toString . -}}
{{- $h := regexFind "[0-9]+h" $d | trimSuffix "h" | default "0" | atoi -}}
{{- $m := regexFind "[0-9]+m" $d | trimSuffix "m" | default "0" | atoi -}}
{{- $s := regexFind "[0-9]+s" $d | trimSuffix "s" | default "0" | atoi -}}
{{- add (mul $h 3600) (mul $m 60) $s -}}
{{- end -}}

{{/*
The largest gap of the schedule, in seconds, for the forms the chart can work out: a minute field
(every minute, every N minutes, minute M, a list of minutes) under `* * * *`, or one time a day (`M H * * *`). Anything else
needs .Values.scheduleLargestGap (from `sweeper check-schedule`), or the chart fails.
*/}}
{{- define "sweeper.largestGap" -}}
{{- if .Values.scheduleLargestGap -}}
{{- include "sweeper.seconds" .Values.scheduleLargestGap -}}
{{- else -}}
{{- $f := splitList " " .Values.schedule -}}
{{- $min := index $f 0 -}}
{{- $rest := slice $f 1 | join " " -}}
{{- $daily := and (regexMatch "^[0-9]+$" $min) (regexMatch "^[0-9]+ \\* \\* \\*$" $rest) -}}
{{- if $daily -}}
86400
{{- else if ne $rest "* * * *" -}}
{{- fail (printf "schedule %q: the chart works out the largest gap of a minute field under `* * * *` or of one time a day only; run `sweeper check-schedule --schedule %q` and set scheduleLargestGap to the gap it prints" .Values.schedule .Values.schedule) -}}
{{- else -}}
{{- $minutes := list -}}
{{- if eq $min "*" -}}
{{- $minutes = until 60 -}}
{{- else if regexMatch "^\\*/[0-9]+$" $min -}}
{{- $minutes = untilStep 0 60 (trimPrefix "*/" $min | atoi | int) -}}
{{- else if regexMatch "^[0-9]+(,[0-9]+)*$" $min -}}
{{- range $m := until 60 -}}
{{- if has (toString $m) (splitList "," $min) -}}
{{- $minutes = append $minutes $m -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- fail (printf "schedule %q: the chart reads minute fields `*`, `*/N` and lists of minutes; for %q set scheduleLargestGap (see `sweeper check-schedule`)" .Values.schedule $min) -}}
{{- end -}}
{{- if not $minutes -}}
{{- fail (printf "schedule %q never fires: minutes are 0-59" .Values.schedule) -}}
{{- end -}}
{{- $gap := add (sub 60 (last $minutes)) (first $minutes) -}}
{{- $prev := first $minutes -}}
{{- range $m := rest $minutes -}}
{{- $gap = max $gap (sub $m $prev) -}}
{{- $prev = $m -}}
{{- end -}}
{{- mul $gap 60 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Refuses values a sweep could not keep, before anything is deployed: the rule `sweeper run
--schedule` applies at run time (a key just above the threshold at one sweep must be read by the
next, which starts one gap later and may run for the deadline), and the one for --protect-ttl.
*/}}
{{- define "sweeper.checkPolicy" -}}
{{- $gap := include "sweeper.largestGap" . | atoi -}}
{{- $threshold := include "sweeper.seconds" .Values.threshold | atoi -}}
{{- $deadline := include "sweeper.seconds" .Values.deadline | atoi -}}
{{- $protect := include "sweeper.seconds" .Values.protectTtl | atoi -}}
{{- if le $threshold (add $gap $deadline) -}}
{{- fail (printf "threshold %s cannot be kept by schedule %q: its largest gap (%ds) plus the deadline %s (%ds) is %ds, so a key just above the threshold at one sweep expires before the next has read it; raise threshold above %ds, run more often, or shorten the deadline" .Values.threshold .Values.schedule $gap .Values.deadline $deadline (add $gap $deadline) (add $gap $deadline)) -}}
{{- end -}}
{{- if and (gt $protect 0) (le $protect $threshold) -}}
{{- fail (printf "protectTtl %s must be above threshold %s (a protected key would be due again at once), or \"0\" to turn protection off" (toString .Values.protectTtl) .Values.threshold) -}}
{{- end -}}
{{- if lt $deadline 1 -}}
{{- fail "deadline must be above 0s" -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the URLs, as files. */}}
{{- define "sweeper.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ .secret | default .root.Values.existingSecret }}
    items:
      {{- if .redis }}
      - key: {{ .root.Values.secretKeys.redisUrl }}
        path: redis-url
      {{- end }}
      - key: {{ .databaseUrlKey | default .root.Values.secretKeys.databaseUrl }}
        path: database-url
{{- end -}}

{{- define "sweeper.podPlacement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The forget Job's name: the release's, then the request's reason (its ticket) made a name. */}}
{{- define "sweeper.forgetName" -}}
{{ include "sweeper.fullname" . }}-forget-{{ regexReplaceAll "[^a-z0-9-]+" (.Values.forget.reason | lower) "-" | trunc 30 | trimSuffix "-" }}
{{- end -}}
