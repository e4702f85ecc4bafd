#!/usr/bin/env bash
# Local service stack for the settle pipeline: Kafka (KRaft), Apicurio Registry, PostgreSQL and
# Prometheus as plain processes on 127.0.0.1 (no Docker). See usage() or `stack.sh --help`.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$DEPLOY_DIR")

# ----------------------------------------------------------------------------- settings

RUN=$(realpath -m "${SETTLE_RUN_DIR:-$REPO_DIR/.run}")

KAFKA_PORT=${SETTLE_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${SETTLE_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_SASL_PORT=${SETTLE_KAFKA_SASL_PORT:-19094}   # SASL_PLAINTEXT + SCRAM-SHA-512; 0: no such listener
KAFKA_TLS_PORT=${SETTLE_KAFKA_TLS_PORT:-19095}     # SASL_SSL + SCRAM-SHA-512; 0: no such listener
KAFKA_SASL_USER=${SETTLE_KAFKA_SASL_LOCAL_USER:-settle-client}
KAFKA_SASL_PASSWORD=${SETTLE_KAFKA_SASL_LOCAL_PASSWORD:-settle-local-sasl}
KAFKA_HEAP=${SETTLE_KAFKA_HEAP:-768m}
REGISTRY_PORT=${SETTLE_REGISTRY_PORT:-18081}
REGISTRY_MGMT_PORT=${SETTLE_REGISTRY_MGMT_PORT:-18082}
REGISTRY_HEAP=${SETTLE_REGISTRY_HEAP:-384m}
REGISTRY_STORAGE=${SETTLE_REGISTRY_STORAGE:-file}   # file: H2 database under the run folder; mem: in-memory
PG_PORT=${SETTLE_PG_PORT:-15432}
PG_USER=${SETTLE_PG_USER:-settle}
PG_PASSWORD=${SETTLE_PG_PASSWORD:-settle-local}
PG_DB=${SETTLE_PG_DB:-settle}
PROMETHEUS_PORT=${SETTLE_PROMETHEUS_PORT:-19090}

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=${LOG4J_VERSION:-2.24.3}
APICURIO_VERSION=${APICURIO_VERSION:-3.3.3}
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

START_TIMEOUT=${SETTLE_START_TIMEOUT:-120}   # seconds for one service to become ready
STOP_TIMEOUT=${SETTLE_STOP_TIMEOUT:-60}      # seconds before a stop escalates to SIGKILL
VENV_PYTHON=${SETTLE_PYTHON:-$REPO_DIR/.venv/bin/python}

SERVICES=(kafka registry postgres prometheus)   # start order; stop is the reverse

PIDS_DIR=$RUN/pids
LIB_DIR=$RUN/lib
BUILD_DIR=$RUN/build
KAFKA_DIR=$RUN/kafka
REGISTRY_DIR=$RUN/registry
PG_DIR=$RUN/postgres
PG_DATA=$PG_DIR/data
PG_SOCKET_DIR=$PG_DIR/run
PROM_DIR=$RUN/prometheus

usage() {
    cat <<EOF
Usage: bash deploy/stack.sh COMMAND [ARGS]

Runs the local stack on 127.0.0.1, with data and logs under \$SETTLE_RUN_DIR ($RUN).

Commands:
  up                   fetch what is missing, start every service that is not running, wait
                       until each is ready (already-running services are left alone)
  down                 stop every service (reverse order; SIGTERM, then SIGKILL after
                       \$SETTLE_STOP_TIMEOUT s); nothing to do when already down
  status               table of service, state, pid, address, RSS; exit 1 unless all healthy
  logs [SERVICE] [-n N] [-f]
                       last N (default 100) lines of a service's log, -f to follow;
                       without SERVICE, the tail of every log
  clean                down, then delete the run folder's data and logs (keeps lib/ downloads)
  stop SERVICE         stop one service (PostgreSQL: fast shutdown of the postmaster; the
                       pipeline's processes are left running: fault injection uses this)
  start SERVICE        start one service if it is not running and wait until it is ready
  restart SERVICE      stop, then start one service (a new process)
  browser              install headless Chromium and its WebDriver (Debian packages chromium,
                       chromium-driver) when missing; \`up\` does this too (the statement
                       page's browser test and \`settle api screenshot\` drive them)
  help                 this text

Services: ${SERVICES[*]}
  kafka       Kafka $KAFKA_VERSION KRaft combined node   PLAINTEXT 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)
                                                  SASL_PLAINTEXT/SCRAM-SHA-512 127.0.0.1:$KAFKA_SASL_PORT (user $KAFKA_SASL_USER)
                                                  SASL_SSL/SCRAM-SHA-512 127.0.0.1:$KAFKA_TLS_PORT (CA: kafka/tls/ca.pem)
  registry    Apicurio Registry $APICURIO_VERSION          http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7 (management :$REGISTRY_MGMT_PORT)
  postgres    PostgreSQL (Debian package)          postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB
  prometheus  Prometheus (Debian package)          http://127.0.0.1:$PROMETHEUS_PORT

Settings (environment, with defaults):
  SETTLE_RUN_DIR=<repo>/.run  SETTLE_START_TIMEOUT=120  SETTLE_STOP_TIMEOUT=60
  SETTLE_KAFKA_PORT=19092  SETTLE_KAFKA_CONTROLLER_PORT=19093  SETTLE_KAFKA_HEAP=768m
  SETTLE_KAFKA_SASL_PORT=19094 (0: no SASL listener)  SETTLE_KAFKA_SASL_LOCAL_USER=settle-client
  SETTLE_KAFKA_TLS_PORT=19095 (SASL_SSL with a local CA made by openssl; 0: no TLS listener)
  SETTLE_KAFKA_SASL_LOCAL_PASSWORD=settle-local-sasl (the local SCRAM user, created at every up)
  SETTLE_REGISTRY_PORT=18081  SETTLE_REGISTRY_MGMT_PORT=18082  SETTLE_REGISTRY_HEAP=384m
  SETTLE_REGISTRY_STORAGE=file (H2 file under the run folder, survives restarts) or mem
  SETTLE_PG_PORT=15432  SETTLE_PG_USER=settle  SETTLE_PG_PASSWORD=settle-local  SETTLE_PG_DB=settle
  SETTLE_PROMETHEUS_PORT=19090
  KAFKA_VERSION=4.1.1  LOG4J_VERSION=2.24.3  APICURIO_VERSION=3.3.3
  SETTLE_JAVA (java for Kafka, needs 17+), SETTLE_REGISTRY_JAVA (java for the registry;
  default: the newest JDK among java on PATH, \$JAVA_HOME and /usr/lib/jvm/*, if it is new
  enough for the registry's class files: Apicurio 3.3 needs Java 21+)
  SETTLE_PYTHON=<repo>/.venv/bin/python (for deploy/healthcheck.py; without a usable venv
  the readiness checks fall back to plain port checks)
EOF
}

# ----------------------------------------------------------------------------- helpers

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# die_with_log MESSAGE LOGFILE...: fail, showing the end of each non-empty log.
die_with_log() {
    local message=$1 log shown=
    shift
    printf 'error: %s\n' "$message" >&2
    for log in "$@"; do
        [[ -s $log ]] || continue
        shown=yes
        printf -- '--- last 40 lines of %s ---\n' "$log" >&2
        tail -n 40 "$log" >&2
        printf -- '--- end of %s ---\n' "$log" >&2
    done
    [[ -n $shown ]] || printf '(no log output in: %s)\n' "$*" >&2
    exit 1
}

# rotate_log FILE: keep the previous run's log as FILE.1, so a failure shows only this run.
rotate_log() {
    if [[ -s $1 ]]; then mv -f "$1" "$1.1"; fi
}

is_service() {
    local s
    for s in "${SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
    return 1
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# render TEMPLATE OUTPUT KEY=VALUE...: replace @KEY@ placeholders (pure bash, no escaping issues).
render() {
    local template=$1 output=$2 content pair key value
    shift 2
    content=$(<"$template")
    for pair in "$@"; do
        key=${pair%%=*}
        value=${pair#*=}
        content=${content//"@${key}@"/"$value"}
    done
    if [[ $content =~ @[A-Z_]+@ ]]; then
        die "template $template: placeholder ${BASH_REMATCH[0]} has no value"
    fi
    mkdir -p "$(dirname "$output")"
    printf '%s\n' "$content" >"$output.tmp"
    mv -f "$output.tmp" "$output"
}

# Is the repo's venv usable for deploy/healthcheck.py? (cached)
HAVE_VENV=
venv_ok() {
    if [[ -z $HAVE_VENV ]]; then
        if [[ -x $VENV_PYTHON ]] && "$VENV_PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1; then
            HAVE_VENV=yes
        else
            HAVE_VENV=no
        fi
    fi
    [[ $HAVE_VENV == yes ]]
}

# run_logged LOG COMMAND...: run quietly into LOG (without terminal colour codes).
run_logged() {
    local log=$1 rc=0
    shift
    "$@" >"$log" 2>&1 || rc=$?
    sed -i 's/\x1b\[[0-9;]*m//g' "$log"
    return "$rc"
}

APT_UPDATED=
# apt_install WHAT PACKAGE...: install Debian packages quietly, log under $RUN/build.
apt_install() {
    local what=$1 log
    shift
    command -v apt-get >/dev/null || die "$what is missing and apt-get is not available; install: $*"
    mkdir -p "$BUILD_DIR"
    log=$BUILD_DIR/apt-$what.log
    say "installing $what (apt)..."
    if [[ -z $APT_UPDATED ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1 \
            || die_with_log "apt-get update failed while installing $what" "$log"
        APT_UPDATED=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 \
        || die_with_log "apt-get install $* failed" "$log"
}

require_maven() {
    command -v mvn >/dev/null || apt_install maven maven
}

# java_major JAVA: the feature version of a java binary (8 for 1.8, 17, 21, ...), or 0.
java_major() {
    local line version
    line=$("$1" -version 2>&1 | grep -m1 -E 'version "' || true)
    version=${line#*version \"}
    version=${version%%\"*}
    [[ $version == 1.* ]] && version=${version#1.}
    version=${version%%[.+-]*}
    [[ $version =~ ^[0-9]+$ ]] && echo "$version" || echo 0
}

# pick_java MIN_MAJOR [EXPLICIT] [newest]: print a java binary of at least MIN_MAJOR.
# EXPLICIT (an environment setting) wins if given. Otherwise the candidates are java on PATH,
# $JAVA_HOME/bin/java and /usr/lib/jvm/*/bin/java: the first good one, or with "newest" the
# one with the highest version.
pick_java() {
    local min=$1 explicit=${2:-} mode=${3:-first} candidate major best='' best_major=0
    if [[ -n $explicit ]]; then
        [[ -x $explicit ]] || explicit=$(command -v "$explicit" || true)
        [[ -n $explicit && $(java_major "$explicit") -ge $min ]] && { echo "$explicit"; return 0; }
        return 1
    fi
    for candidate in "$(command -v java || true)" "${JAVA_HOME:+$JAVA_HOME/bin/java}" \
        $(ls -d /usr/lib/jvm/*/bin/java 2>/dev/null | sort -V); do
        [[ -n $candidate && -x $candidate ]] || continue
        major=$(java_major "$candidate")
        ((major >= min)) || continue
        if [[ $mode != newest ]]; then
            echo "$candidate"
            return 0
        fi
        if ((major > best_major)); then best=$candidate best_major=$major; fi
    done
    [[ -n $best ]] && echo "$best"
}

# ----------------------------------------------------------------------------- processes

pid_file() { echo "$PIDS_DIR/$1.pid"; }

# The strings (one a line) that must all appear in a live process's command line for it to be
# this stack's service: guards against a stale pid file whose pid now belongs to something else,
# and against another stack in another run folder. Each ends with the space that follows an
# argument, so /x/.run does not match /x/.run2.
service_markers() {
    case $1 in
        kafka) printf '%s\n' "-Dsettle.run.dir=$RUN " "kafka.Kafka $KAFKA_DIR/server.properties " ;;
        registry) printf '%s\n' "-Dsettle.run.dir=$RUN " "-Dquarkus.http.port=" ;;
        postgres) printf '%s\n' "-D $PG_DATA " ;;
        prometheus) printf '%s\n' "--config.file=$PROM_DIR/prometheus.yml " ;;
    esac
}

# owned_by_stack SERVICE PID: is PID alive and running this stack's SERVICE?
owned_by_stack() {
    local service=$1 pid=$2 cmdline marker
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) " || return 1
    # A process in the middle of exec (launch's `bash -c 'echo $$ >pidfile; exec java ...'`)
    # shows an empty cmdline for a moment; read as "not ours", that deleted a live broker's pid
    # file and failed its start ("exited while starting") while it went on running.
    local tries=0
    while [[ $cmdline == " " ]] && ((tries++ < 20)) && kill -0 "$pid" 2>/dev/null; do
        sleep 0.05
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) " || return 1
    done
    while IFS= read -r marker; do
        [[ $cmdline == *"$marker"* ]] || return 1
    done < <(service_markers "$service")
}

# service_pid SERVICE: print the pid of the running service, or fail. Cleans stale pid files.
service_pid() {
    local service=$1 file pid
    file=$(pid_file "$service")
    if [[ $service == postgres && -f $PG_DATA/postmaster.pid ]]; then
        pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    elif [[ -f $file ]]; then
        pid=$(<"$file")
    else
        return 1
    fi
    if owned_by_stack "$service" "$pid"; then
        echo "$pid"
        return 0
    fi
    rm -f "$file"   # stale: the process is gone (postgres removes postmaster.pid itself)
    return 1
}

is_running() { service_pid "$1" >/dev/null; }

# launch SERVICE LOG WORKDIR COMMAND...: start a detached process (own session, no stdin),
# its output appended to LOG, its pid written to pids/SERVICE.pid by the process itself.
launch() {
    local service=$1 log=$2 workdir=$3
    shift 3
    mkdir -p "$PIDS_DIR" "$(dirname "$log")"
    rm -f "$(pid_file "$service")"
    (
        cd "$workdir"
        # shellcheck disable=SC2016 # $$ and $@ expand in the inner shell
        exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$(pid_file "$service")" "$@" \
            </dev/null >>"$log" 2>&1
    ) &
    # Wait briefly for the pid file so callers can watch the process.
    local i
    for i in $(seq 1 50); do
        [[ -s $(pid_file "$service") ]] && return 0
        sleep 0.1
    done
    die_with_log "$service did not start" "$log"
}

# signal_and_wait PID TIMEOUT SIGNAL: send SIGNAL, wait up to TIMEOUT s for PID to exit.
signal_and_wait() {
    local pid=$1 limit=$2 signal=$3 waited=0
    kill "-$signal" "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((waited >= limit * 10)) && return 1
        sleep 0.1
        waited=$((waited + 1))
    done
    return 0
}

# rss_kib PID...: summed VmRSS of the given processes, in KiB.
rss_kib() {
    local pid total=0 value
    for pid in "$@"; do
        value=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

# ----------------------------------------------------------------------------- health

# check_once SERVICE: one health check; prints a reason and fails if not healthy.
check_once() {
    local service=$1 port
    port=$(service_port "$service")
    if venv_ok; then
        local out
        if out=$("$VENV_PYTHON" "$DEPLOY_DIR/healthcheck.py" "$service" --timeout 3 --brief 2>&1); then
            return 0
        fi
        echo "$out"
        return 1
    fi
    # No venv yet: plain checks only.
    if ! port_open "$port"; then
        echo "nothing accepts TCP connections on 127.0.0.1:$port"
        return 1
    fi
    if [[ $service == postgres ]]; then
        "$(find_pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d "$PG_DB" -t 3 || { echo "pg_isready: not accepting connections"; return 1; }
    fi
    return 0
}

service_port() {
    case $1 in
        kafka) echo "$KAFKA_PORT" ;;
        registry) echo "$REGISTRY_PORT" ;;
        postgres) echo "$PG_PORT" ;;
        prometheus) echo "$PROMETHEUS_PORT" ;;
    esac
}

service_log() {
    case $1 in
        kafka) echo "$KAFKA_DIR/logs/server.log" ;;
        registry) echo "$REGISTRY_DIR/logs/registry.log" ;;
        postgres) echo "$PG_DIR/log/postgresql.log" ;;
        prometheus) echo "$PROM_DIR/log/prometheus.log" ;;
    esac
}

# The logs to show when a start fails: Kafka's log4j file, plus the JVM's own output (a JVM
# that dies before log4j starts only writes there).
startup_logs() {
    service_log "$1"
    if [[ $1 == kafka ]]; then echo "$KAFKA_DIR/logs/stdout.log"; fi
}

# wait_ready SERVICE: poll until healthy; fail with the reason and the log tail if the process
# dies or the timeout passes. Sets SECONDS_SINCE_LAUNCH.
wait_ready() {
    local service=$1 started=${LAUNCHED_AT[$1]:-$SECONDS} reason="not checked yet" pid logs
    while true; do
        if ! pid=$(service_pid "$service"); then
            mapfile -t logs < <(startup_logs "$service")
            die_with_log "$service exited while starting" "${logs[@]}"
        fi
        if ! port_open "$(service_port "$service")"; then
            reason="port $(service_port "$service") not open yet"
        elif reason=$(check_once "$service"); then
            SECONDS_SINCE_LAUNCH=$((SECONDS - started))
            if [[ $service != postgres ]]; then
                say "$service: ready ${SECONDS_SINCE_LAUNCH}s after launch (pid $pid)"
            fi
            return 0
        fi
        if ((SECONDS - started >= START_TIMEOUT)); then
            mapfile -t logs < <(startup_logs "$service")
            warn "$service not ready after ${START_TIMEOUT}s (last check: $reason); stopping it"
            stop_service "$service" >&2
            die_with_log "$service did not become ready within ${START_TIMEOUT}s (SETTLE_START_TIMEOUT): $reason" "${logs[@]}"
        fi
        sleep 1
    done
}

# Refuse to start when another process already holds a port we need.
ensure_ports_free() {
    local service=$1 port
    shift
    for port in "$@"; do
        if port_open "$port"; then
            die "$service: port 127.0.0.1:$port is already in use by another process (not this stack's $service in $RUN); stop it or set the SETTLE_*_PORT setting"
        fi
    done
}

# ----------------------------------------------------------------------------- kafka

KAFKA_LIB=$LIB_DIR/kafka
KAFKA_PROPS=$KAFKA_DIR/server.properties

fetch_kafka() {
    local stamp="kafka_2.13=$KAFKA_VERSION log4j-slf4j-impl=$LOG4J_VERSION"
    if [[ -f $KAFKA_LIB/.settle-stamp && $(<"$KAFKA_LIB/.settle-stamp") == "$stamp" ]]; then
        return 0
    fi
    require_maven
    say "fetching Kafka $KAFKA_VERSION jars (log4j $LOG4J_VERSION)..."
    local log=$BUILD_DIR/mvn-kafka.log
    mkdir -p "$BUILD_DIR"
    rm -rf "$KAFKA_LIB"
    if ! run_logged "$log" mvn -B -q -Dstyle.color=never -f "$DEPLOY_DIR/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
        -Dsettle.buildDir="$BUILD_DIR/kafka" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIB"; then
        rm -rf "$KAFKA_LIB"
        die_with_log "fetching Kafka $KAFKA_VERSION jars failed (is that version published? try another KAFKA_VERSION)" "$log"
    fi
    compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" >/dev/null || die_with_log "no kafka_2.13 jar in $KAFKA_LIB after the download" "$log"
    echo "$stamp" >"$KAFKA_LIB/.settle-stamp"
}

prepare_kafka() {
    fetch_kafka
    KAFKA_JAVA=$(pick_java 17 "${SETTLE_JAVA:-}") \
        || die "Kafka $KAFKA_VERSION needs Java 17+; none found (set SETTLE_JAVA=/path/to/java)"
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
    local sasl_listener= tls_listener=
    if [[ $KAFKA_SASL_PORT != 0 ]]; then sasl_listener=",SASL://127.0.0.1:$KAFKA_SASL_PORT"; fi
    if [[ $KAFKA_TLS_PORT != 0 ]]; then
        kafka_tls_material
        tls_listener=",TLS://127.0.0.1:$KAFKA_TLS_PORT"
    fi
    render "$DEPLOY_DIR/kafka/server.properties.in" "$KAFKA_PROPS" \
        KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
        KAFKA_SASL_LISTENER="$sasl_listener" KAFKA_TLS_LISTENER="$tls_listener" \
        KAFKA_TLS_DIR="$KAFKA_TLS_DIR" KAFKA_DATA_DIR="$KAFKA_DIR/data"
    if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
        local log=$KAFKA_DIR/logs/format.log cluster_id
        if [[ ! -s $KAFKA_DIR/cluster.id ]]; then
            "$KAFKA_JAVA" -Xmx256m -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid \
                >"$KAFKA_DIR/cluster.id.tmp" 2>"$log" \
                || die_with_log "kafka: StorageTool random-uuid failed" "$log"
            mv "$KAFKA_DIR/cluster.id.tmp" "$KAFKA_DIR/cluster.id"
        fi
        cluster_id=$(<"$KAFKA_DIR/cluster.id")
        say "kafka: formatting storage (cluster id $cluster_id)..."
        "$KAFKA_JAVA" -Xmx256m -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.properties" \
            -Dkafka.logs.dir="$KAFKA_DIR/logs" -cp "$KAFKA_LIB/*" kafka.tools.StorageTool \
            format --standalone -t "$cluster_id" -c "$KAFKA_PROPS" --ignore-formatted >"$log" 2>&1 \
            || die_with_log "kafka: formatting $KAFKA_DIR/data failed" "$log"
    fi
}

start_kafka() {
    local ports=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT")
    if [[ $KAFKA_SASL_PORT != 0 ]]; then ports+=("$KAFKA_SASL_PORT"); fi
    if [[ $KAFKA_TLS_PORT != 0 ]]; then ports+=("$KAFKA_TLS_PORT"); fi
    ensure_ports_free kafka "${ports[@]}"
    say "kafka: starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (heap $KAFKA_HEAP)..."
    rotate_log "$KAFKA_DIR/logs/stdout.log"
    launch kafka "$KAFKA_DIR/logs/stdout.log" "$KAFKA_DIR" \
        "$KAFKA_JAVA" "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
        "-Xlog:gc*:file=$KAFKA_DIR/logs/kafkaServer-gc.log:time,tags:filecount=5,filesize=20M" \
        "-XX:ErrorFile=$KAFKA_DIR/logs/hs_err_pid%p.log" \
        "-Dsettle.run.dir=$RUN" \
        "-Dkafka.logs.dir=$KAFKA_DIR/logs" \
        "-Dlog4j2.configurationFile=$DEPLOY_DIR/kafka/log4j2.properties" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_PROPS"
}

# A local CA and a broker certificate for 127.0.0.1/localhost, made once per run folder (10 years):
# clients of the TLS listener verify the broker with SETTLE_KAFKA_SSL_CA_LOCATION=.../tls/ca.pem.
KAFKA_TLS_DIR=$KAFKA_DIR/tls
kafka_tls_material() {
    local log=$KAFKA_DIR/logs/tls.log
    if [[ -s $KAFKA_TLS_DIR/broker-keystore.pem && -s $KAFKA_TLS_DIR/ca.pem ]]; then return 0; fi
    command -v openssl >/dev/null \
        || die "kafka: openssl is needed for the TLS listener (or set SETTLE_KAFKA_TLS_PORT=0)"
    say "kafka: making a local CA and a broker certificate in $KAFKA_TLS_DIR..."
    mkdir -p "$KAFKA_TLS_DIR"
    chmod 700 "$KAFKA_TLS_DIR"
    if ! (
        set -e
        cd "$KAFKA_TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.pem \
            -subj "/CN=settle local Kafka CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile broker.ext -out broker.pem
        # Kafka's PEM keystore: the PKCS#8 key (unencrypted, in a 0700 folder) and its chain.
        (umask 077 && cat broker.key broker.pem ca.pem >broker-keystore.pem.tmp)
        mv broker-keystore.pem.tmp broker-keystore.pem
    ) >"$log" 2>&1; then
        rm -f "$KAFKA_TLS_DIR/broker-keystore.pem"
        die_with_log "kafka: making the TLS certificates failed" "$log"
    fi
}

# The local SCRAM user for the SASL listener, created (or its password reset) over PLAINTEXT
# with the Admin API on every `up`: idempotent, and it also works on data formatted before the
# listener existed. The password goes through the environment, never the command line.
kafka_scram_user() {
    [[ $KAFKA_SASL_PORT != 0 || $KAFKA_TLS_PORT != 0 ]] || return 0
    if ! venv_ok; then
        warn "kafka: no usable venv at $VENV_PYTHON: SCRAM user $KAFKA_SASL_USER not created"
        return 0
    fi
    local out
    out=$(SETTLE_KAFKA_SASL_LOCAL_PASSWORD="$KAFKA_SASL_PASSWORD" "$VENV_PYTHON" \
        "$DEPLOY_DIR/kafka/scram_user.py" --bootstrap "127.0.0.1:$KAFKA_PORT" \
        --user "$KAFKA_SASL_USER" 2>&1) || die "kafka: creating SCRAM user $KAFKA_SASL_USER failed: $out"
    say "kafka: $out"
    local port
    for port in "$KAFKA_SASL_PORT" "$KAFKA_TLS_PORT"; do
        if [[ $port != 0 ]] && ! port_open "$port"; then
            warn "kafka: no SASL listener on 127.0.0.1:$port (started before it was configured?): restart Kafka to enable it"
        fi
    done
}

# ----------------------------------------------------------------------------- registry

REGISTRY_APP=$LIB_DIR/registry/$APICURIO_VERSION

# The runnable jar: quarkus-run.jar at the top (3.3.x) or under quarkus-app/ (3.1-3.2), or an
# older *-runner.jar.
registry_jar() {
    local jar
    jar=$(find "$REGISTRY_APP" -maxdepth 3 -name quarkus-run.jar -print -quit 2>/dev/null)
    [[ -n $jar ]] || jar=$(find "$REGISTRY_APP" -maxdepth 3 -name '*-runner.jar' -print -quit 2>/dev/null)
    [[ -n $jar ]] && echo "$jar"
}

fetch_registry() {
    local stamp="apicurio-registry-app=$APICURIO_VERSION"
    if [[ -f $REGISTRY_APP/.settle-stamp && $(<"$REGISTRY_APP/.settle-stamp") == "$stamp" ]] \
        && registry_jar >/dev/null; then
        return 0
    fi
    require_maven
    say "fetching Apicurio Registry $APICURIO_VERSION (about 160 MB the first time)..."
    local log=$BUILD_DIR/mvn-registry.log
    mkdir -p "$BUILD_DIR"
    rm -rf "$REGISTRY_APP" "$BUILD_DIR/registry"
    if ! run_logged "$log" mvn -B -q -Dstyle.color=never -f "$DEPLOY_DIR/registry/pom.xml" \
        -Dapicurio.version="$APICURIO_VERSION" -Dsettle.buildDir="$BUILD_DIR/registry" \
        -Dsettle.registryDir="$REGISTRY_APP" "$DEPENDENCY_PLUGIN:unpack"; then
        rm -rf "$REGISTRY_APP"
        die_with_log "fetching Apicurio Registry $APICURIO_VERSION failed (is that version published? try another APICURIO_VERSION)" "$log"
    fi
    registry_jar >/dev/null || die_with_log "no quarkus-run.jar or *-runner.jar in $REGISTRY_APP after unpacking" "$log"
    echo "$stamp" >"$REGISTRY_APP/.settle-stamp"
}

# The Java feature version the registry was compiled for (class file major - 44); 17 if unknown.
registry_java_needed() {
    local jar class major
    jar=$(find "$REGISTRY_APP" -maxdepth 3 -path '*/app/*.jar' -print -quit 2>/dev/null)
    if [[ -n $jar ]] && command -v unzip >/dev/null; then
        class=$(unzip -Z1 "$jar" 2>/dev/null | grep -v '^META-INF/' | grep -m1 '\.class$' || true)
        if [[ -n $class ]]; then
            major=$(unzip -p "$jar" "$class" 2>/dev/null | od -An -tu1 -j7 -N1 | tr -d ' ')
            [[ $major =~ ^[0-9]+$ ]] && ((major > 44)) && { echo $((major - 44)); return 0; }
        fi
    fi
    echo 17
}

prepare_registry() {
    fetch_registry
    REGISTRY_JAR=$(registry_jar)
    local needed
    needed=$(registry_java_needed)
    # Apicurio 3.3 is compiled for Java 21 while Debian bookworm's default java is 17: use the
    # newest JDK on the machine (e.g. a Temurin beside the system OpenJDK).
    REGISTRY_JAVA=$(pick_java "$needed" "${SETTLE_REGISTRY_JAVA:-}" newest) \
        || die "Apicurio Registry $APICURIO_VERSION needs Java $needed+; none found (set SETTLE_REGISTRY_JAVA=/path/to/java, or pick an APICURIO_VERSION built for your Java)"
    mkdir -p "$REGISTRY_DIR/logs" "$REGISTRY_DIR/data"
    case $REGISTRY_STORAGE in
        file | mem) ;;
        *) die "SETTLE_REGISTRY_STORAGE must be file or mem, not '$REGISTRY_STORAGE'" ;;
    esac
}

start_registry() {
    ensure_ports_free registry "$REGISTRY_PORT" "$REGISTRY_MGMT_PORT"
    say "registry: starting Apicurio Registry $APICURIO_VERSION on 127.0.0.1:$REGISTRY_PORT (heap $REGISTRY_HEAP, java $(java_major "$REGISTRY_JAVA"), $REGISTRY_STORAGE storage)..."
    # Storage: Apicurio's built-in H2. "file" keeps it in $RUN/registry/data so schema ids stay
    # valid for the records already in Kafka across restarts (with "mem" a restart starts ids
    # from 1 again, and old records could decode with the wrong schema).
    local storage=()
    if [[ $REGISTRY_STORAGE == file ]]; then
        storage=("-Dapicurio.datasource.url=jdbc:h2:file:$REGISTRY_DIR/data/registry;DB_CLOSE_ON_EXIT=FALSE")
    fi
    rotate_log "$REGISTRY_DIR/logs/registry.log"
    launch registry "$REGISTRY_DIR/logs/registry.log" "$REGISTRY_DIR" \
        "$REGISTRY_JAVA" "-Xmx$REGISTRY_HEAP" -Djava.awt.headless=true \
        "-XX:ErrorFile=$REGISTRY_DIR/logs/hs_err_pid%p.log" \
        "-Dsettle.run.dir=$RUN" \
        -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$REGISTRY_PORT" \
        -Dquarkus.management.host=127.0.0.1 "-Dquarkus.management.port=$REGISTRY_MGMT_PORT" \
        -Dquarkus.banner.enabled=false "${storage[@]}" \
        -jar "$REGISTRY_JAR"
}

# ----------------------------------------------------------------------------- postgres

# Newest PostgreSQL major under /usr/lib/postgresql (never the /usr/local/bin symlinks).
find_pg_bin() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [[ -n $initdb ]] && dirname "$initdb"
}

as_postgres() { runuser -u postgres -- "$@"; }

# initdb refuses root and the server must read its folder: every parent must be traversable.
make_traversable() {
    local dir=$1
    while [[ $dir != / ]]; do
        dir=$(dirname "$dir")
        if ! runuser -u postgres -- test -x "$dir"; then
            say "postgres: chmod o+x $dir (so the postgres user can reach $PG_DIR)"
            chmod o+x "$dir"
        fi
    done
}

prepare_postgres() {
    PG_BIN=$(find_pg_bin) || true
    if [[ -z $PG_BIN ]]; then
        apt_install postgresql postgresql
        PG_BIN=$(find_pg_bin) || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
    fi
    id postgres >/dev/null 2>&1 || die "the postgres system user is missing (reinstall the postgresql package)"
    mkdir -p "$PG_DIR/log" "$PG_SOCKET_DIR"
    make_traversable "$PG_DIR"
    chown postgres:postgres "$PG_DIR" "$PG_DIR/log" "$PG_SOCKET_DIR"
    chmod 0700 "$PG_SOCKET_DIR"
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        say "postgres: initdb $PG_DATA ($(basename "$(dirname "$PG_BIN")"))..."
        rm -rf "$PG_DATA"
        local log=$PG_DIR/log/initdb.log
        as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
            --no-instructions >"$log" 2>&1 \
            || die_with_log "postgres: initdb failed" "$log"
        echo "include 'settle.conf'" >>"$PG_DATA/postgresql.conf"
    fi
    render "$DEPLOY_DIR/postgres/postgresql.conf.in" "$PG_DATA/settle.conf"
    render "$DEPLOY_DIR/postgres/pg_hba.conf.in" "$PG_DATA/pg_hba.conf"
    chown postgres:postgres "$PG_DATA/settle.conf" "$PG_DATA/pg_hba.conf"
    chmod 0600 "$PG_DATA/settle.conf" "$PG_DATA/pg_hba.conf"
}

start_postgres() {
    ensure_ports_free postgres "$PG_PORT"
    local major
    major=$(basename "$(dirname "$PG_BIN")")
    say "postgres: starting PostgreSQL $major on 127.0.0.1:$PG_PORT..."
    rotate_log "$PG_DIR/log/postgresql.log"
    # -W: don't wait here; wait_ready polls while the JVMs start in parallel.
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/log/postgresql.log" -W \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_SOCKET_DIR" start >/dev/null \
        || die_with_log "postgres: pg_ctl start failed" "$PG_DIR/log/postgresql.log"
    local i
    for i in $(seq 1 50); do
        [[ -f $PG_DATA/postmaster.pid ]] && break
        sleep 0.1
    done
}

# Create or update the project's role and database (idempotent), over the private socket.
bootstrap_postgres() {
    local log=$PG_DIR/log/bootstrap.log i
    [[ -n ${PG_BIN:-} ]] || PG_BIN=$(find_pg_bin) || die "no PostgreSQL binaries under /usr/lib/postgresql"
    for i in $(seq 1 "$START_TIMEOUT"); do
        "$PG_BIN/pg_isready" -q -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres && break
        is_running postgres || die_with_log "postgres exited while starting" "$(service_log postgres)"
        ((i < START_TIMEOUT)) || die_with_log "postgres not accepting connections on its socket after ${START_TIMEOUT}s" "$(service_log postgres)"
        sleep 1
    done
    as_postgres "$PG_BIN/psql" -X -q -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres \
        -v user="$PG_USER" -v password="$PG_PASSWORD" -v db="$PG_DB" \
        -f "$DEPLOY_DIR/postgres/bootstrap.sql" >"$log" 2>&1 \
        || die_with_log "postgres: creating role $PG_USER and database $PG_DB failed" "$log"
    service_pid postgres >"$(pid_file postgres)"
}

# ----------------------------------------------------------------------------- prometheus

prepare_prometheus() {
    command -v prometheus >/dev/null || apt_install prometheus prometheus
    PROMETHEUS_BIN=$(command -v prometheus) || die "prometheus not found after installing it"
    mkdir -p "$PROM_DIR/data" "$PROM_DIR/log" "$PROM_DIR/targets"
    render "$DEPLOY_DIR/prometheus/prometheus.yml.in" "$PROM_DIR/prometheus.yml" \
        PROMETHEUS_PORT="$PROMETHEUS_PORT" REGISTRY_MGMT_PORT="$REGISTRY_MGMT_PORT" \
        RULES_DIR="$DEPLOY_DIR/prometheus/rules" TARGETS_DIR="$PROM_DIR/targets"
    if command -v promtool >/dev/null; then
        promtool check config "$PROM_DIR/prometheus.yml" >"$PROM_DIR/log/promtool.log" 2>&1 \
            || die_with_log "prometheus: generated config (or a rule file) is invalid" "$PROM_DIR/log/promtool.log"
    fi
}

start_prometheus() {
    ensure_ports_free prometheus "$PROMETHEUS_PORT"
    say "prometheus: starting on 127.0.0.1:$PROMETHEUS_PORT..."
    rotate_log "$PROM_DIR/log/prometheus.log"
    launch prometheus "$PROM_DIR/log/prometheus.log" "$PROM_DIR" \
        "$PROMETHEUS_BIN" "--config.file=$PROM_DIR/prometheus.yml" \
        "--web.listen-address=127.0.0.1:$PROMETHEUS_PORT" \
        "--storage.tsdb.path=$PROM_DIR/data" --storage.tsdb.retention.time=7d \
        --web.enable-lifecycle
}

reload_prometheus() {
    prepare_prometheus
    if curl -fsS -X POST "http://127.0.0.1:$PROMETHEUS_PORT/-/reload" >/dev/null 2>&1; then
        say "prometheus: configuration and rules reloaded"
    else
        warn "prometheus: reload failed; \`bash deploy/stack.sh down && up\` restarts it"
    fi
}

# ----------------------------------------------------------------------------- browser

# Debian's Chromium and the chromedriver built with it (always the same version): the
# statement page's browser test and `settle api screenshot` drive them through WebDriver at
# /usr/bin/chromedriver. Nothing is downloaded outside the package manager.
CHROMIUM_BIN=/usr/bin/chromium
CHROMEDRIVER_BIN=/usr/bin/chromedriver

require_browser() {
    if [[ -x $CHROMIUM_BIN && -x $CHROMEDRIVER_BIN ]]; then return 0; fi
    apt_install chromium chromium chromium-driver
    [[ -x $CHROMIUM_BIN && -x $CHROMEDRIVER_BIN ]] \
        || die "chromium installed but $CHROMIUM_BIN or $CHROMEDRIVER_BIN is missing"
}

cmd_browser() {
    require_browser
    say "browser: $("$CHROMIUM_BIN" --version 2>/dev/null || echo "$CHROMIUM_BIN"), $("$CHROMEDRIVER_BIN" --version 2>/dev/null | cut -d' ' -f1-2)"
}

# ----------------------------------------------------------------------------- stop

stop_service() {
    local service=$1 pid
    if ! pid=$(service_pid "$service"); then
        return 0
    fi
    say "$service: stopping (pid $pid)..."
    local term=TERM
    # PostgreSQL: SIGTERM is "smart" shutdown, which waits for every client to disconnect;
    # SIGINT is "fast" shutdown (roll back open transactions, checkpoint, exit).
    if [[ $service == postgres ]]; then term=INT; fi
    if ! signal_and_wait "$pid" "$STOP_TIMEOUT" "$term"; then
        warn "$service (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        signal_and_wait "$pid" 10 KILL || die "$service (pid $pid) survived SIGKILL"
    fi
    rm -f "$(pid_file "$service")"
}

# ----------------------------------------------------------------------------- commands

cmd_up() {
    local service started=() t0=$SECONDS
    declare -gA LAUNCHED_AT=()
    say "settle stack: run folder $RUN"
    mkdir -p "$RUN" "$PIDS_DIR"
    venv_ok || warn "no usable venv at $VENV_PYTHON (needs confluent_kafka): readiness falls back to port checks"
    for service in "${SERVICES[@]}"; do
        if is_running "$service"; then
            say "$service: already running (pid $(service_pid "$service"))"
            # Settings may have changed since it started: keep the role and database current.
            if [[ $service == postgres ]]; then bootstrap_postgres; fi
            # Rules and scrape config live in the repo: re-render, check and hot-reload them.
            if [[ $service == prometheus ]]; then reload_prometheus; fi
            continue
        fi
        "prepare_$service"
        "start_$service"
        LAUNCHED_AT[$service]=$SECONDS
        started+=("$service")
    done
    for service in "${started[@]}"; do
        if [[ $service == postgres ]]; then
            bootstrap_postgres
            wait_ready postgres
            say "postgres: ready ${SECONDS_SINCE_LAUNCH}s after launch (pid $(service_pid postgres); role $PG_USER, database $PG_DB)"
        else
            wait_ready "$service"
        fi
    done
    if is_running kafka; then kafka_scram_user; fi
    # Anything already running must be healthy too.
    for service in "${SERVICES[@]}"; do
        if [[ " ${started[*]} " != *" $service "* ]]; then
            local reason
            reason=$(check_once "$service") || die_with_log "$service is running but unhealthy: $reason" "$(service_log "$service")"
        fi
    done
    require_browser
    say "settle stack: up in $((SECONDS - t0))s"
    say "  kafka     127.0.0.1:$KAFKA_PORT"
    if [[ $KAFKA_SASL_PORT != 0 ]]; then
        say "  kafka     127.0.0.1:$KAFKA_SASL_PORT SASL_PLAINTEXT SCRAM-SHA-512 (user $KAFKA_SASL_USER)"
    fi
    if [[ $KAFKA_TLS_PORT != 0 ]]; then
        say "  kafka     127.0.0.1:$KAFKA_TLS_PORT SASL_SSL SCRAM-SHA-512 (CA $KAFKA_TLS_DIR/ca.pem)"
    fi
    say "  registry  http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
    say "  postgres  postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
    say "  metrics   http://127.0.0.1:$PROMETHEUS_PORT"
}

# Pipeline processes started by `settle demo` (pid files proc-<name>.pid) stop before the
# services they use, so they can finish their batch and commit.
stop_pipeline() {
    local f pid name
    for f in "$PIDS_DIR"/proc-*.pid; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .pid)
        name=${name#proc-}
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            say "$name: stopping (pid $pid)..."
            if ! signal_and_wait "$pid" "$STOP_TIMEOUT" TERM; then
                warn "$name (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
                signal_and_wait "$pid" 10 KILL || true
            fi
        fi
        rm -f "$f"
    done
}

cmd_down() {
    local i service any=
    stop_pipeline
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        service=${SERVICES[i]}
        if is_running "$service"; then
            any=yes
            stop_service "$service"
        fi
    done
    if [[ -n $any ]]; then say "settle stack: down"; else say "settle stack: already down"; fi
}

# The one service named on the command line, or a clear error.
service_arg() {
    [[ -n ${1:-} ]] || die "which service? one of: ${SERVICES[*]}"
    is_service "$1" || die "unknown service '$1'; one of: ${SERVICES[*]}"
}

cmd_stop() {
    service_arg "${1:-}"
    if is_running "$1"; then stop_service "$1"; say "$1: stopped"; else say "$1: already stopped"; fi
}

cmd_start() {
    service_arg "${1:-}"
    local service=$1
    declare -gA LAUNCHED_AT=()
    mkdir -p "$RUN" "$PIDS_DIR"
    if is_running "$service"; then
        say "$service: already running (pid $(service_pid "$service"))"
        return 0
    fi
    "prepare_$service"
    "start_$service"
    LAUNCHED_AT[$service]=$SECONDS
    if [[ $service == postgres ]]; then
        bootstrap_postgres
        wait_ready postgres
        say "postgres: ready ${SECONDS_SINCE_LAUNCH}s after launch (pid $(service_pid postgres))"
    else
        wait_ready "$service"
    fi
}

cmd_restart() {
    service_arg "${1:-}"
    cmd_stop "$1"
    cmd_start "$1"
}

cmd_status() {
    local service pid state rss address detail healthy=0
    printf '%-11s %-9s %-8s %-22s %8s  %s\n' SERVICE STATE PID ADDRESS RSS_MiB DETAIL
    for service in "${SERVICES[@]}"; do
        address=127.0.0.1:$(service_port "$service")
        if pid=$(service_pid "$service"); then
            if [[ $service == postgres ]]; then
                # postmaster plus its children (shared buffers are counted once per process
                # that touched them, so this overstates real memory use).
                # shellcheck disable=SC2046
                rss=$(rss_kib "$pid" $(ps -o pid= --ppid "$pid" 2>/dev/null || true))
            else
                rss=$(rss_kib "$pid")
            fi
            rss=$(awk -v k="$rss" 'BEGIN { printf "%.0f", k / 1024 }')
            if detail=$(check_once "$service"); then
                state=up
                detail=
            else
                state=unhealthy
                healthy=1
            fi
        else
            pid=- rss=- state=down detail='' healthy=1
        fi
        printf '%-11s %-9s %-8s %-22s %8s  %s\n' "$service" "$state" "$pid" "$address" "$rss" "$detail"
    done
    local f name
    for f in "$PIDS_DIR"/proc-*.pid; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .pid)
        name=${name#proc-}
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            rss=$(awk -v k="$(rss_kib "$pid")" 'BEGIN { printf "%.0f", k / 1024 }')
            printf '%-11s %-9s %-8s %-22s %8s  %s\n' "${name:0:11}" running "$pid" "(pipeline)" "$rss" ""
        fi
    done
    return "$healthy"
}

cmd_logs() {
    local service='' lines=100 follow=''
    while (($#)); do
        case $1 in
            -f | --follow) follow=yes ;;
            -n) lines=${2:?-n needs a number}; shift ;;
            -n*) lines=${1#-n} ;;
            -h | --help) usage; return 0 ;;
            *) is_service "$1" || die "unknown service '$1' (one of: ${SERVICES[*]})"; service=$1 ;;
        esac
        shift
    done
    if [[ -z $service ]]; then
        local s
        for s in "${SERVICES[@]}"; do
            [[ -f $(service_log "$s") ]] || continue
            printf '==> %s: %s <==\n' "$s" "$(service_log "$s")"
            tail -n "$lines" "$(service_log "$s")"
        done
        return 0
    fi
    local log
    log=$(service_log "$service")
    [[ -f $log ]] || die "$service has no log yet ($log)"
    if [[ -n $follow ]]; then exec tail -n "$lines" -F "$log"; fi
    tail -n "$lines" "$log"
}

cmd_clean() {
    cmd_down
    [[ -d $RUN ]] || { say "settle stack: nothing to clean"; return 0; }
    say "settle stack: removing data and logs under $RUN (keeping lib/ and build/)"
    local entry
    for entry in "$RUN"/* "$RUN"/.[!.]*; do
        [[ -e $entry ]] || continue
        case $(basename "$entry") in lib | build) continue ;; esac
        rm -rf "$entry"
    done
}

main() {
    local command=${1:-help}
    (($#)) && shift
    case $command in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        logs) cmd_logs "$@" ;;
        clean) cmd_clean "$@" ;;
        stop) cmd_stop "$@" ;;
        start) cmd_start "$@" ;;
        restart) cmd_restart "$@" ;;
        browser) cmd_browser "$@" ;;
        help | -h | --help) usage ;;
        *) usage >&2; die "unknown command '$command'" ;;
    esac
}

main "$@"
