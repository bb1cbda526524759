#!/usr/bin/env bash
# Stops what e2e/dev/up.sh started and removes its state. Idempotent.
set -euo pipefail
STATE="${GEODB_CACHE:-$HOME/.cache/geodb}/dev"
for name in operator localcp; do
	pidfile="$STATE/$name.pid"
	[ -f "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
done
rm -rf "$STATE"
echo "down: stopped"
