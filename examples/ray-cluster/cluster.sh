#!/usr/bin/env bash
# A Ray cluster on this machine for examples/ray-cluster: a head and two worker nodes, each a
# `ray start` of its own (several raylets on one machine is how Ray tests itself). The workers
# declare two logical GPUs of 24 GiB each (labels say how much memory: there is no NVML here)
# and a zone, which the example's models select with nodeSelector.
#
#   examples/ray-cluster/cluster.sh up     # head on 127.0.0.1:6380, then worker-a and worker-b
#   examples/ray-cluster/cluster.sh down   # `ray stop`: every Ray process of this user here
#
# On real machines, run the head's line on one box and a worker's line on each GPU box (without
# --num-gpus and the gpu-memory label: Ray and NVML find the GPUs), with modelplane installed on
# every node: pip install 'modelplane[ray]' (and your engines).
set -euo pipefail
port="${RAY_PORT:-6380}"
common=(--num-cpus=1 --object-store-memory=100000000 --disable-usage-stats)

case "${1:-up}" in
up)
  ray start --head --port="$port" --num-gpus=0 --include-dashboard=false \
    --labels=name=head "${common[@]}"
  agent_port=52366
  for zone in a b; do
    ray start --address="127.0.0.1:$port" --num-gpus=2 \
      --labels="name=worker-$zone,zone=$zone,modelplane.io/gpu-memory=24GiB" \
      --dashboard-agent-listen-port="$agent_port" "${common[@]}"
    agent_port=$((agent_port + 1))  # one per node: they share this machine
  done
  echo "ray cluster up: head at 127.0.0.1:$port, workers worker-a (zone a) and worker-b (zone b)"
  ;;
down)
  ray stop
  ;;
*)
  echo "usage: $0 up|down" >&2
  exit 2
  ;;
esac
