#!/usr/bin/env bash
# Build casehub's image and run it as production does, against the local PostgreSQL:
#
#   bash deploy/smoke.sh
#
# Follows the shared containers recipe for these machines (podman 4.3 from Debian with runc, its
# own containers.conf and storage.conf, a debootstrap'd bookworm as the base image, the host's CA
# bundle mounted for the build only). Then, with the image as built:
#   - throwaway keys made by the image's own commands (`casehub keys rotate`, as the runbook says);
#   - `casehub db upgrade` in a one-off container, on a fresh database it drops at the end;
#   - the API container (CASEHUB_ENV=production, read-only root filesystem, every capability
#     dropped, keys mounted read-only) until /readyz answers 200, and its HEALTHCHECK;
#   - an agency and a client registered with the CLI inside it, a client_credentials token from
#     POST /oauth/token (through a "TLS terminator": X-Forwarded-Proto), and a call with it;
#   - the processes run as uid 10001, not root;
#   - a signing-key rotation seen by the running API (a second key in its JWKS);
#   - the webhook worker, the audit sequencer, checkpoint and verify commands, each once.
# Everything it starts is removed on the way out, failed or not. Needs root (it installs podman
# and friends with apt when they are missing) and PostgreSQL on 127.0.0.1:5432 (trust, postgres).
#
# CASEHUB_SMOKE_DIR (default /var/tmp/casehub-smoke) keeps podman's storage between runs, so the
# base image and the build's layers are reused; delete it to start cold. CASEHUB_SMOKE_BASE=
# python:3.12-slim builds on that image instead (where a registry can be reached).
set -euo pipefail

cd "$(dirname "$0")/.."

STARTED=$SECONDS
SMOKE_DIR="${CASEHUB_SMOKE_DIR:-/var/tmp/casehub-smoke}"
BASE_IMAGE="${CASEHUB_SMOKE_BASE:-localhost/debian:bookworm-slim}"
IMAGE="localhost/casehub:smoke-$$"
API="casehub-smoke-api-$$"
DATABASE="casehub_smoke_$$"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
PG_ADMIN=(-h 127.0.0.1 -p 5432 -U postgres)
UID_IN_IMAGE=10001
# The rate limiter's shared counters: the local Redis, under a prefix of this run's own.
REDIS_URL="redis://127.0.0.1:6379/0"
REDIS_PREFIX="casehub-smoke-$$"

log() { printf '\n== smoke (%ss): %s ==\n' "$((SECONDS - STARTED))" "$*"; }
fail() {
    echo "smoke: FAILED: $*" >&2
    exit 1
}

RUN_DIR=""
CREATED_DB=0
cleanup() {
    local status=$?
    # A second signal (timeout's, say) must not cut the cleaning short: it is bounded anyway.
    trap - EXIT
    trap '' INT TERM
    set +e
    if [ "$status" -ne 0 ] && podman container exists "$API" 2>/dev/null; then
        echo "-- last lines of the API container's log --" >&2
        podman logs --tail 40 "$API" >&2
    fi
    for name in $(podman ps -a --format '{{.Names}}' --filter "name=casehub-smoke-.*-$$" 2>/dev/null); do
        podman rm -f -t 5 "$name" >/dev/null
    done
    podman image exists "$IMAGE" 2>/dev/null && podman rmi -f "$IMAGE" >/dev/null
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -u "$REDIS_URL" --scan --pattern "*/$REDIS_PREFIX/*" 2>/dev/null |
            xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1
    fi
    [ "$CREATED_DB" -eq 1 ] && dropdb "${PG_ADMIN[@]}" --if-exists "$DATABASE"
    [ -n "$RUN_DIR" ] && rm -rf "$RUN_DIR"
    echo "smoke: $([ "$status" -eq 0 ] && echo passed || echo "FAILED ($status)") in $((SECONDS - STARTED))s"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- 1. tools ------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    for tool in podman buildah debootstrap runc; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 240 apt-get update -qq
    timeout 300 apt-get install -y -qq podman buildah debootstrap runc >/dev/null
}

# -- 2. podman's configuration, all of it in SMOKE_DIR: the machine's own stays untouched --------
configure_podman() {
    mkdir -p "$SMOKE_DIR"
    # runc: crun refuses this machine's hybrid cgroup layout. The ulimits: root may not raise
    # RLIMIT_NOFILE to podman's default of 1048576 here. cgroupfs and a file event log: there is
    # no systemd to ask.
    cat >"$SMOKE_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$SMOKE_DIR/run/libpod"
EOF
    cat >"$SMOKE_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$SMOKE_DIR/run/storage"
graphroot = "$SMOKE_DIR/storage"
EOF
    export CONTAINERS_CONF="$SMOKE_DIR/containers.conf"
    export CONTAINERS_STORAGE_CONF="$SMOKE_DIR/storage.conf"
}

# The Debian mirror (and its security mirror) this machine's apt uses.
mirror_for() {
    local suite="$1" files=()
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] && files+=("$file")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    { grep -hE '^(URIs:|deb )' "${files[@]}" || true; } |
        grep -oE 'https?://[^ ]+' | grep -E "/debian${suite}/?\$" | head -n 1 || true
}

# -- 3. the base image: a minimal bookworm from Debian's mirror, made once and kept -------------
ensure_base_image() {
    [ "$BASE_IMAGE" = "localhost/debian:bookworm-slim" ] || return 0
    exec 9>"$SMOKE_DIR/base.lock"
    flock 9
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE: cached"
        flock -u 9
        return 0
    fi
    local mirror security rootfs
    mirror="$(mirror_for '')"
    security="$(mirror_for '-security')"
    [ -n "$mirror" ] || fail "no Debian mirror in /etc/apt/sources.list*"
    log "base image: debootstrap --variant=minbase bookworm from $mirror"
    rootfs="$(mktemp -d "$SMOKE_DIR/rootfs.XXXXXX")"
    timeout 240 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    {
        echo "deb $mirror bookworm main"
        echo "deb $mirror bookworm-updates main"
        [ -n "$security" ] && echo "deb $security bookworm-security main"
    } >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    flock -u 9
}

# -- 4. the image ----------------------------------------------------------------------------------
build_image() {
    log "podman build (BASE=$BASE_IMAGE)"
    local build_log="$SMOKE_DIR/build-$$.log"
    # The host's CA bundle is mounted for this build only (pip may meet a TLS-intercepting
    # proxy); it is never copied into the image. Docker format keeps the HEALTHCHECK.
    if ! timeout 300 podman build --format docker --pull=never --network=host \
        -f deploy/Containerfile \
        --build-arg "BASE=$BASE_IMAGE" \
        -v "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt \
        -t "$IMAGE" . >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        rm -f "$build_log"
        fail "podman build"
    fi
    rm -f "$build_log"
    podman image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{ printf "image built: %.0f MB\n", $1 / 1e6 }'
}

# -- 5. running it -------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A one-off container with production's settings and restrictions; extra podman options first,
# then `--` and the command.
run_once() {
    local options=()
    while [ "$1" != "--" ]; do
        options+=("$1")
        shift
    done
    shift
    timeout 120 podman run --rm --name "casehub-smoke-once$RANDOM-$$" --no-healthcheck \
        --network=host --read-only --cap-drop=ALL --security-opt=no-new-privileges \
        "${ENV_ARGS[@]}" "${options[@]}" "$IMAGE" "$@"
}

# What a run killed outright (SIGKILL) left behind: its containers, image, database and key
# folder, each named by its pid. (Its Redis counters expire by themselves within minutes.)
sweep_dead_runs() {
    local name pid
    for name in $(podman ps -a --format '{{.Names}}' --filter 'name=^casehub-smoke-' 2>/dev/null); do
        pid="${name##*-}"
        kill -0 "$pid" 2>/dev/null || podman rm -f -t 5 "$name" >/dev/null 2>&1 || true
    done
    for name in $(podman images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null |
        grep '^localhost/casehub:smoke-[0-9]*$' || true); do
        pid="${name##*-}"
        kill -0 "$pid" 2>/dev/null || podman rmi -f "$name" >/dev/null 2>&1 || true
    done
    for name in $(psql "${PG_ADMIN[@]}" -Atc \
        "SELECT datname FROM pg_database WHERE datname ~ '^casehub_smoke_[0-9]+$'"); do
        pid="${name##*_}"
        kill -0 "$pid" 2>/dev/null || dropdb "${PG_ADMIN[@]}" --if-exists "$name" || true
    done
    for name in /tmp/casehub-smoke-*.*; do
        [ -d "$name" ] || continue
        pid="${name#/tmp/casehub-smoke-}"
        pid="${pid%%.*}"
        kill -0 "$pid" 2>/dev/null || rm -rf "$name"
    done
}

main() {
    ensure_tools
    configure_podman
    pg_isready -q "${PG_ADMIN[@]}" || fail "PostgreSQL is not answering on 127.0.0.1:5432"
    sweep_dead_runs
    ensure_base_image
    build_image

    RUN_DIR="$(mktemp -d "/tmp/casehub-smoke-$$.XXXXXX")"
    local secrets="$RUN_DIR/secrets" signing="$RUN_DIR/checkpoint-signing" port
    # secrets/: what the API and worker read (read-only mounts); checkpoint-signing/: the
    # private checkpoint key, for `casehub audit checkpoint` alone.
    install -d -m 0700 -o "$UID_IN_IMAGE" -g "$UID_IN_IMAGE" "$secrets" "$signing"
    port="$(free_port)"

    log "database $DATABASE on 127.0.0.1:5432"
    createdb "${PG_ADMIN[@]}" "$DATABASE"
    CREATED_DB=1
    # Production's settings, for every container, and the API's own (the rate-limit storage:
    # only serving processes need it, and commands are not given it).
    ENV_ARGS=(
        -e CASEHUB_ENV=production
        -e "CASEHUB_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$DATABASE"
        -e CASEHUB_ISSUER=https://casehub.smoke.invalid
        -e CASEHUB_SIGNING_KEYS_FILE=/run/casehub/signing-keys.json
        -e CASEHUB_WEBHOOK_KEY_FILE=/run/casehub/webhook-key
        -e CASEHUB_AUDIT_CHECKPOINT_KEY_FILE=/run/casehub/audit-checkpoint-key.pem
        -e CASEHUB_AUDIT_SEQUENCER=0
    )
    API_ENV=(
        -e "CASEHUB_RATE_LIMIT_STORAGE=$REDIS_URL"
        -e "CASEHUB_RATE_LIMIT_KEY_PREFIX=$REDIS_PREFIX"
        -e CASEHUB_TRUSTED_PROXIES=1
        -e "CASEHUB_BIND=127.0.0.1:$port"
    )

    log "keys: casehub keys rotate, the webhook key, the audit checkpoint key pair"
    run_once -v "$secrets:/run/casehub" -- casehub keys rotate
    run_once -v "$secrets:/run/casehub" -v "$signing:/run/signing" -- python -c '
import base64, secrets
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
open("/run/casehub/webhook-key", "w").write(base64.b64encode(secrets.token_bytes(32)).decode())
key = Ed25519PrivateKey.generate()
pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
open("/run/signing/audit-checkpoint-key.pem", "wb").write(pem)
pub = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
open("/run/casehub/audit-checkpoint-key.pem", "wb").write(pub)'
    chmod 0600 "$secrets"/* "$signing"/*

    log "migration: casehub db upgrade"
    run_once -- casehub db upgrade

    log "API container on 127.0.0.1:$port"
    # Podman's health timers need systemd: the image's HEALTHCHECK command is run by hand below.
    podman run -d --name "$API" --no-healthcheck --network=host --read-only \
        --cap-drop=ALL --security-opt=no-new-privileges "${ENV_ARGS[@]}" "${API_ENV[@]}" \
        -v "$secrets:/run/casehub:ro" "$IMAGE" >/dev/null
    local base="http://127.0.0.1:$port" status="" deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz" || true)"
        [ "$status" = 200 ] && break
        [ "$(podman inspect --format '{{.State.Running}}' "$API")" = true ] ||
            fail "the API container exited"
        sleep 1
    done
    [ "$status" = 200 ] || fail "/readyz answered ${status:-nothing} for 60 s"
    echo "/readyz 200 after $((SECONDS - deadline + 60)) s"
    local check=()
    mapfile -t check < <(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" |
        python3 -c 'import json, sys; test = json.load(sys.stdin); assert test[0] == "CMD"; print("\n".join(test[1:]))')
    [ "${#check[@]}" -gt 0 ] || fail "the image has no HEALTHCHECK"
    podman exec "$API" "${check[@]}" || fail "the image's HEALTHCHECK command failed"
    echo "HEALTHCHECK command: healthy"

    log "as the operator: an agency and a client, with the CLI in the container"
    podman exec "$API" casehub agencies add smoke-police --name "Smoke Police" --kind police
    local client id secret token
    client="$(podman exec "$API" casehub clients add --agency smoke-police --name smoke \
        --scopes "referrals:read" --json)"
    id="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["client_id"])' <<<"$client")"
    secret="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["client_secret"])' <<<"$client")"

    log "as a partner: POST /oauth/token (client_credentials), then GET /v1/referrals"
    token_for() {
        curl -s --max-time 10 -u "$id:$secret" -H 'X-Forwarded-Proto: https' \
            -d grant_type=client_credentials "$base/oauth/token" |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("access_token", ""))'
    }
    token="$(token_for)"
    [ -n "$token" ] || fail "POST /oauth/token returned no access_token"
    echo "token: ${#token} characters"
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
        -H "Authorization: Bearer $token" -H 'X-Forwarded-Proto: https' "$base/v1/referrals")"
    [ "$status" = 200 ] || fail "GET /v1/referrals with the token answered $status"
    echo "GET /v1/referrals 200"
    if command -v redis-cli >/dev/null 2>&1 && redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
        [ -n "$(redis-cli -u "$REDIS_URL" --scan --pattern "*/$REDIS_PREFIX/*" | head -n 1)" ] ||
            fail "the rate limiter wrote nothing to Redis"
        echo "rate-limit counters in Redis ($REDIS_URL, prefix $REDIS_PREFIX)"
    else
        echo "no Redis at $REDIS_URL: the API limits per process (its fallback); not checked"
    fi

    log "the processes' user"
    local uids
    # Every process in the container (the gunicorn master and workers, and this probe).
    uids="$(podman exec "$API" python -c 'import os
print(" ".join(sorted({str(os.stat(f"/proc/{p}").st_uid) for p in os.listdir("/proc") if p.isdigit()})))')"
    echo "processes in the API container run as uid $uids"
    [ "$uids" = "$UID_IN_IMAGE" ] || fail "a process in the API container runs as another user"

    log "signing-key rotation reaches the running API (keys mounted read-only)"
    local old_token="$token" new_kid kid="" keys=0
    new_kid="$(run_once -v "$secrets:/run/casehub" -- casehub keys rotate | awk '{ print $NF }')"
    echo "now signing with key $new_kid"
    # Each gunicorn worker looks at the key file at most once a second.
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        token="$(token_for)"
        kid="$(python3 -c 'import base64, json, sys
header = sys.argv[1].split(".")[0]
print(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])' "$token")"
        [ "$kid" = "$new_kid" ] && break
        sleep 1
    done
    [ "$kid" = "$new_kid" ] || fail "tokens are still signed with $kid after the rotation"
    keys="$(curl -s --max-time 5 "$base/.well-known/jwks.json" |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin)["keys"]))')"
    [ "$keys" = 2 ] || fail "the JWKS has $keys keys after a rotation, not 2 (new and retired)"
    for which in new old; do
        [ "$which" = old ] && token="$old_token"
        status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
            -H "Authorization: Bearer $token" -H 'X-Forwarded-Proto: https' "$base/v1/referrals")"
        [ "$status" = 200 ] || fail "a token signed with the $which key answered $status"
    done
    echo "JWKS: 2 keys; tokens signed with the new key and with the retired one both work"

    log "the other commands: webhook worker, audit sequencer, checkpoint, verify"
    run_once -v "$secrets:/run/casehub:ro" -- casehub webhooks worker --once
    run_once -- casehub audit sequence --once
    run_once -v "$signing:/run/casehub:ro" -- casehub audit checkpoint >/dev/null
    # Verifying needs only the public half of the checkpoint key.
    run_once -v "$secrets:/run/casehub:ro" -- casehub audit verify
}

main "$@"
