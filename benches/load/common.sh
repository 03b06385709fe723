# shellcheck shell=bash
# Helpers shared by run.sh, tls.sh and l4.sh, which source this file. Sourcing it only defines
# functions and variables; it starts, writes and traps nothing.
#
# The functions read the caller's globals: HOST, WORK, MANIFESTS, KINGRESS, ECHO1_PORT,
# ECHO2_PORT, HTTP_PORT, ADMIN_PORT. The ones that start a process add its PID to PIDS and
# set a global named after it (ECHO1_PID, ECHO2_PID, KINGRESS_PID, NGINX_PID). The caller
# installs the cleanup: `trap cleanup EXIT; trap 'exit 130' INT TERM`.

log() { printf '\n== %s\n' "$*"; }

# Installs Debian packages (apt-get update only when the first try fails).
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@" ||
        { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@"; }
}

# Prints a command the way it is about to run: `$ cmd arg...`, shell-quoted.
show_cmd() { printf '$'; printf ' %q' "$@"; printf '\n'; }

# --- processes we start, stopped by PID on exit ------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
# Exits 1 unless every given port of $HOST is free.
require_free_ports() {
    local p
    for p in "$@"; do
        port_free "$p" || { echo "port $HOST:$p is in use; pass --port-base N" >&2; exit 1; }
    done
}

# Polls until `curl` gets the expected status (no fixed sleeps); gives up after ~30 s.
wait_status() {
    local want=$1 url=$2; shift 2
    local deadline=$((SECONDS + 30)) got
    while :; do
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [ "$got" = "$want" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for $want from $url (last: $got)" >&2
            return 1
        fi
        sleep 0.02
    done
}

# make_work PREFIX: a fresh WORK folder under $TMPDIR (or /tmp) with MANIFESTS in it.
make_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    MANIFESTS=$WORK/manifests
    mkdir -p "$MANIFESTS"
    echo "work folder: $WORK"
}

# --- backends ---------------------------------------------------------------------------
# Two echo backends, e1 and e2, on ECHO1_PORT and ECHO2_PORT; returns once both answer 200.
start_echo_backends() {
    log "starting echo backends on $HOST:$ECHO1_PORT and $HOST:$ECHO2_PORT"
    "$KINGRESS" echo --listen "$HOST:$ECHO1_PORT" --name e1 >"$WORK/echo-e1.log" 2>&1 &
    ECHO1_PID=$!
    PIDS+=("$ECHO1_PID")
    "$KINGRESS" echo --listen "$HOST:$ECHO2_PORT" --name e2 >"$WORK/echo-e2.log" 2>&1 &
    ECHO2_PID=$!
    PIDS+=("$ECHO2_PID")
    wait_status 200 "http://$HOST:$ECHO1_PORT/"
    wait_status 200 "http://$HOST:$ECHO2_PORT/"
}

# $MANIFESTS/echo.yaml: the Service echo (port 80) and one EndpointSlice per echo backend.
write_echo_manifest() {
    local i port_var
    cat >"$MANIFESTS/echo.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
EOF
    for i in 1 2; do
        port_var=ECHO${i}_PORT
        cat >>"$MANIFESTS/echo.yaml" <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-e$i
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports:
- {name: http, port: ${!port_var}, protocol: TCP}
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: true}
EOF
    done
}

# --- proxies ----------------------------------------------------------------------------
# start_kingress [ARG...]: `kingress run` on $MANIFESTS with the HTTP and admin listeners
# (and ARG...); returns once /readyz answers 200.
start_kingress() {
    "$KINGRESS" run --manifests "$MANIFESTS" \
        --http-listen "$HOST:$HTTP_PORT" --admin-listen "$HOST:$ADMIN_PORT" "$@" \
        >"$WORK/kingress.log" 2>&1 &
    KINGRESS_PID=$!
    PIDS+=("$KINGRESS_PID")
    wait_status 200 "http://$HOST:$ADMIN_PORT/readyz"
}

# The top level of an nginx.conf whose files all stay in $WORK/nginx; the caller writes
# the http block.
nginx_conf_main() {
    cat <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
EOF
}

# The inside of a `location` that proxies to upstream echo with keepalive and sets the
# headers ingress-nginx sets (indented for a location in a server in http).
nginx_proxy_to_echo() {
    cat <<'EOF'
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Scheme $scheme;
EOF
}

# nginx in the foreground on $WORK/nginx/nginx.conf (written by the caller).
start_nginx() {
    nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

# --- CPU time ---------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# CPU time (utime + stime of all threads, in clock ticks) of the given processes.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
# Clock ticks as seconds, two decimals.
ticks_secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}'; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
