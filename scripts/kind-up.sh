#!/usr/bin/env bash
# Bring tripflow up on a local kind cluster and run one day, the way it runs in production:
# a Prefect server and a Kubernetes worker (Helm), the tripflow-k8s work pool from
# work_pools/kubernetes.json, every deployment in prefect.yaml, and one flow run of
# daily-trip-etl that the worker starts as a Kubernetes Job (one pod, gone after its TTL).
#
# Needs: docker, kind, kubectl, helm, uv (and this repository). Nothing here ran on the machines
# tripflow is developed on (no Docker there): it is written to be correct by reading, and the
# manifests it applies are validated by tests/k8s.
#
#   scripts/kind-up.sh            # create (or reuse) the cluster, deploy, run 2025-11-15
#   scripts/kind-up.sh --down     # delete the cluster
#
# Settings (environment): CLUSTER (tripflow), IMAGE (tripflow:0.1.0), RUN_DATE (2025-11-15),
# PREFECT_TAG (3.9.1-python3.11, the server image; the worker uses the tripflow image),
# PREFECT_CHART_VERSION (unset: the repository's latest prefect-server/prefect-worker charts).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-tripflow}"
IMAGE="${IMAGE:-tripflow:0.1.0}"
RUN_DATE="${RUN_DATE:-2025-11-15}"
PREFECT_TAG="${PREFECT_TAG:-3.9.1-python3.11}"
NS=data-pipeline
PREFECT_NS=prefect
PORT=4200
CHART_VERSION=()
if [[ -n "${PREFECT_CHART_VERSION:-}" ]]; then
  CHART_VERSION=(--version "$PREFECT_CHART_VERSION")
fi

log() { printf '\n==> %s\n' "$*" >&2; }

if [[ "${1:-}" == "--down" ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

for tool in docker kind kubectl helm uv; do
  command -v "$tool" >/dev/null || { echo "kind-up: '$tool' is required" >&2; exit 2; }
done

log "kind cluster '$CLUSTER' (a control plane, an on-demand worker and a 'spot' worker)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s --config - <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
EOF
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
# The second worker node plays the spot pool: same label and taint as work_pools/README.md.
SPOT_NODE="$(kubectl get nodes -o name | grep -- '-worker2$')"
kubectl label --overwrite "$SPOT_NODE" workload=analytics
kubectl taint --overwrite "$SPOT_NODE" analytics=true:NoSchedule

log "image $IMAGE (built here, loaded into kind: never pulled)"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "namespaces, RBAC, ServiceAccounts, the PII key Secret"
for ns in "$NS" "$PREFECT_NS"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
done
kubectl apply -f work_pools/rbac.yaml -f work_pools/service-accounts.yaml
# Created once and never rotated here: a new key would hash the same rider differently.
if ! kubectl -n "$NS" get secret tripflow-pii-key >/dev/null 2>&1; then
  kubectl -n "$NS" create secret generic tripflow-pii-key \
    --from-literal=key="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi

log "Prefect server (Helm, namespace $PREFECT_NS)"
helm repo add prefect https://prefecthq.github.io/prefect-helm >/dev/null 2>&1 || true
helm repo update prefect >/dev/null
helm upgrade --install prefect-server prefect/prefect-server "${CHART_VERSION[@]}" \
  --namespace "$PREFECT_NS" \
  --set global.prefect.image.prefectTag="$PREFECT_TAG" \
  --wait --timeout 10m

log "port-forward to the server on localhost:$PORT"
kubectl -n "$PREFECT_NS" port-forward svc/prefect-server "$PORT:4200" >/dev/null 2>&1 &
FORWARD_PID=$!
trap 'kill "$FORWARD_PID" 2>/dev/null || true' EXIT
export PREFECT_API_URL="http://localhost:$PORT/api"
for _ in $(seq 1 60); do
  curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
  sleep 2
done
curl -fsS "$PREFECT_API_URL/health" >/dev/null

log "work pool tripflow-k8s from work_pools/kubernetes.json"
uv run prefect work-pool create tripflow-k8s --type kubernetes \
  --base-job-template work_pools/kubernetes.json --overwrite

log "Prefect worker (Helm, namespace $NS, least-privilege RBAC from work_pools/rbac.yaml)"
helm upgrade --install prefect-worker prefect/prefect-worker "${CHART_VERSION[@]}" \
  --namespace "$NS" \
  -f work_pools/worker-values.yaml \
  --set worker.image.repository="${IMAGE%:*}" \
  --set worker.image.prefectTag="${IMAGE##*:}" \
  --wait --timeout 10m

log "deployments from prefect.yaml"
uv run prefect --no-prompt deploy --all

log "one run: daily-trip-etl for $RUN_DATE on the seed's sample trips"
# kind has no object storage: stages in their own pods need the shared staging bucket
# (TRIPFLOW_STAGING) and a TripWarehouse block, so this run keeps every stage in its one pod,
# with the pod's own staging folder and DuckDB file. Job variables parse as JSON: a quantity like
# "1" must be quoted to stay a string.
uv run prefect deployment run 'daily-trip-etl/daily-trip-etl' \
  --param run_date="$RUN_DATE" \
  --param source=sample \
  --param stage_deployments=false \
  --param staging=/home/tripflow/.tripflow/staging \
  --param warehouse=duckdb:/home/tripflow/.tripflow/warehouse.duckdb \
  --job-variable cpu_request=250m \
  --job-variable 'cpu_limit="1"' \
  --job-variable memory_request=512Mi \
  --job-variable memory_limit=2Gi \
  --watch --watch-timeout 900

log "the run's Job and pod (deleted by Kubernetes ttlSecondsAfterFinished after an hour)"
kubectl -n "$NS" get jobs,pods -l prefect.io/flow-run-id -o wide
cat >&2 <<EOF

Up. The Prefect UI: kubectl -n $PREFECT_NS port-forward svc/prefect-server $PORT:4200, then
http://localhost:$PORT. Run another day:
  PREFECT_API_URL=$PREFECT_API_URL uv run prefect deployment run 'daily-trip-etl/daily-trip-etl' --param run_date=YYYY-MM-DD
Tear down: scripts/kind-up.sh --down
EOF
