#!/bin/bash
# Counts Redis commands per room publish with history on and off.
set -e
BIN=${BIN:-target/debug/herald-local}  # run from the repository root
for mode in on off; do
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  rpid=$!
  sleep 0.5
  extra=""
  [ $mode = off ] && extra="HERALD_HISTORY_SIZE=0"
  env -i PATH=$PATH HERALD_STORE=redis HERALD_REDIS_URL=redis://127.0.0.1:$port HERALD_JWT_SECRET=s RUST_LOG=error $extra $BIN --port 0 > /tmp/hl.out 2>&1 &
  hpid=$!
  for i in $(seq 50); do grep -q 'listening on ws://' /tmp/hl.out && break; sleep 0.2; done
  addr=$(grep -o 'ws://[0-9.:]*' /tmp/hl.out | head -1 | sed 's#ws://##')
  curl -s http://$addr/2015-03-31/functions/publish/invocations -d '{"room":"warm","data":0}' >/dev/null
  redis-cli -p $port CONFIG RESETSTAT >/dev/null
  for i in $(seq 100); do curl -s http://$addr/2015-03-31/functions/publish/invocations -d '{"room":"orders","data":1}' >/dev/null; done
  echo "== history $mode: commands for 100 room publishes (no subscribers)"
  redis-cli -p $port INFO commandstats | grep -v '^#' | grep -v -E 'cmdstat_(config|info|ping)' | sed 's/,usec=.*//' 
  kill $hpid; kill $rpid; wait 2>/dev/null || true
done
