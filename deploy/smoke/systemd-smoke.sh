#!/usr/bin/env bash
# Manual smoke test of the systemd units under a real systemd (not run by CI: it boots the
# host's /usr in a systemd-nspawn container, needs root and `systemd-container`, ~3 minutes,
# two of them systemd waiting for network-online.target inside the container).
#
# Inside the container it starts the stand-ins (`contact-sync-sim`, next to the binary), runs
# contact-sync-backfill.service, then contact-sync.service for 45 s, stops it, and records
# Result/ExecMainStatus, the sandbox seen from /proc (UID, seccomp, capabilities), the state
# and credentials directories, `status` and the journal in $OUT.
#
#   cargo build --release --workspace && bash deploy/smoke/systemd-smoke.sh [path/to/contact-sync]
#
# The units are tested as shipped (Type=notify + watchdog). SMOKE_TYPE_EXEC=1 overrides
# Type=exec/WatchdogSec=0, for bisecting a start-up problem.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${1:-target/release/contact-sync}")"
SMOKE_TYPE_EXEC="${SMOKE_TYPE_EXEC:-0}"
command -v systemd-nspawn >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends systemd-container >/dev/null; }

W="$(mktemp -d)"; OUT="$W/out"
mkdir -p "$W"/{bin,creds,dropin,wants,out}
cp "$BIN" "$W/bin/contact-sync"
cp "$(dirname "$BIN")/contact-sync-sim" "$W/bin/contact-sync-sim"
# Secrets the stand-ins accept; source-token/omi-token are unused but listed in the units.
printf 'unused' > "$W/creds/source-token"; printf 'unused' > "$W/creds/omi-token"
printf 'demo-password\n' > "$W/creds/source-password"; printf 'omi-api-key\n' > "$W/creds/omi-api-key"
printf 'el-key\n' > "$W/creds/engagelab-api-key"; printf 'el-secret\n' > "$W/creds/engagelab-api-secret"
chmod 600 "$W"/creds/*
cat > "$W/contact-sync.toml" <<'TOML'
[database]
url = "sqlite://data/overridden-by-the-unit.db"
[source]
base_url = "http://127.0.0.1:18181/dolphin/apiv1"
username = "demo"
poll_interval = "30s"
requests_per_second = 2000.0
[omi]
base_url = "http://127.0.0.1:18182"
requests_per_second = 2000.0
[engagelab]
base_url = "http://127.0.0.1:18183"
requests_per_second = 2000.0
[retry]
initial_backoff = "200ms"
max_backoff = "5s"
TOML
chmod 644 "$W/contact-sync.toml"
mkdir -p "$W/etc-cs"; mv "$W/contact-sync.toml" "$W/etc-cs/"; mv "$W/creds" "$W/etc-cs/credentials"
# The secrets by absolute %d path (works whether or not the daemon resolves relative *_file
# names against $CREDENTIALS_DIRECTORY yet).
cat > "$W/dropin/smoke.conf" <<'CONF'
[Service]
LoadCredential=source-password:/etc/contact-sync/credentials/source-password
LoadCredential=omi-api-key:/etc/contact-sync/credentials/omi-api-key
Environment=CONTACT_SYNC__SOURCE__PASSWORD_FILE=%d/source-password
Environment=CONTACT_SYNC__OMI__API_KEY_FILE=%d/omi-api-key
Environment=CONTACT_SYNC__ENGAGELAB__API_KEY_FILE=%d/engagelab-api-key
Environment=CONTACT_SYNC__ENGAGELAB__API_SECRET_FILE=%d/engagelab-api-secret
CONF
if [[ "$SMOKE_TYPE_EXEC" == 1 ]]; then printf 'Type=exec\nWatchdogSec=0\n' >> "$W/dropin/smoke.conf"; fi
cat > "$W/driver.sh" <<'DRIVER'
#!/bin/bash
exec > /out/driver.log 2>&1
set -x
systemd-run --unit=cs-sim -p DynamicUser=yes /usr/local/bin/contact-sync-sim --contacts 5000 --port 18181
sleep 3
systemctl start contact-sync-backfill.service; echo "backfill start rc=$?"
systemctl show contact-sync-backfill -p Result,ExecMainStatus
systemctl start contact-sync.service; echo "daemon start rc=$?"
sleep 45
systemctl show contact-sync -p ActiveState,SubState,NRestarts,StatusText
P=$(systemctl show -p MainPID --value contact-sync)
grep -E 'Uid|CapEff|NoNewPrivs|Seccomp' /proc/$P/status
ls -la /var/lib/contact-sync/ /run/credentials/contact-sync.service/
curl -s -w ' readyz %{http_code}\n' http://127.0.0.1:9464/readyz
time systemctl stop contact-sync.service
systemctl show contact-sync -p Result,ExecMainStatus
CONTACT_SYNC__SOURCE__PASSWORD=x CONTACT_SYNC__OMI__API_KEY=x CONTACT_SYNC__ENGAGELAB__API_KEY=x \
  CONTACT_SYNC__ENGAGELAB__API_SECRET=x CONTACT_SYNC__DATABASE__URL=sqlite:///var/lib/contact-sync/contact-sync.db \
  /usr/local/bin/contact-sync --config /etc/contact-sync/contact-sync.toml status
journalctl --no-pager -o short-precise -u contact-sync -u contact-sync-backfill > /out/journal.txt
systemctl poweroff
DRIVER
chmod 755 "$W/driver.sh"
printf '[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/opt/driver.sh\n' > "$W/cs-smoke.service"
ln -s /etc/systemd/system/cs-smoke.service "$W/wants/cs-smoke.service"

timeout 600 systemd-nspawn -q -D / --volatile=yes --private-network --register=no --keep-unit \
  --bind-ro="$W/bin:/usr/local/bin" --bind-ro=/etc/ssl \
  --bind-ro="$PWD/deploy/systemd/contact-sync.service:/etc/systemd/system/contact-sync.service" \
  --bind-ro="$PWD/deploy/systemd/contact-sync-backfill.service:/etc/systemd/system/contact-sync-backfill.service" \
  --bind-ro="$W/dropin:/etc/systemd/system/contact-sync.service.d" \
  --bind-ro="$W/dropin:/etc/systemd/system/contact-sync-backfill.service.d" \
  --bind-ro="$W/etc-cs:/etc/contact-sync" \
  --bind-ro="$W/driver.sh:/opt/driver.sh" \
  --bind-ro="$W/cs-smoke.service:/etc/systemd/system/cs-smoke.service" \
  --bind-ro="$W/wants:/etc/systemd/system/multi-user.target.wants" \
  --bind-ro=/dev/null:/etc/systemd/system/systemd-firstboot.service \
  --bind="$OUT:/out" -b > "$W/console.log" 2>&1 || true
grep -v '^+ ' "$OUT/driver.log"
echo "journal: $OUT/journal.txt  console: $W/console.log"
grep -q 'Result=success' "$OUT/driver.log" && ! grep -q 'Result=exit-code\|Result=timeout\|Result=watchdog' "$OUT/driver.log"
