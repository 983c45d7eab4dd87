#!/usr/bin/env bash
# Checks the deployment files as far as these machines can (no Docker daemon, no cluster, no
# helm binary):
#   - the Helm chart deploy/helm/peage, rendered by deploy/helm/render.py with its defaults and
#     with every option turned, then validated strictly (unknown fields are errors) against the
#     Kubernetes schemas by kubernetes-validate, and checked for what the chart promises: a
#     Deployment per role with probes and resources, secrets only by reference, a peage.toml
#     that `peage config check` accepts;
#   - deploy/compose.yaml, by `docker-compose config` (the compose specification's schema);
#   - deploy/dev/peage.toml, by `peage config check`.
# Needs what `deploy/dev/services.sh install` installs, and a built `peage` (PEAGE_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${PEAGE_TOOLS_DIR:-$HOME/.cache/peage}
PY="$TOOLS/k8s-venv/bin/python"
VALIDATE="$TOOLS/k8s-venv/bin/kubernetes-validate"
PEAGE_BIN=${PEAGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/peage}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.31.0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

log() { echo "validate: $*" >&2; }

[ -x "$PEAGE_BIN" ] || cargo build -q -p peage
"$PEAGE_BIN" config check --config deploy/dev/peage.toml >/dev/null
log "deploy/dev/peage.toml: valid"

docker-compose -f deploy/compose.yaml config -q
log "deploy/compose.yaml: valid"

render() { # name, render.py arguments...
    local name=$1; shift
    "$PY" deploy/helm/render.py deploy/helm/peage "$@" >"$out/$name.yaml"
    "$VALIDATE" --strict --quiet -k "$KUBERNETES_VERSION" "$out/$name.yaml"
    "$PY" - "$out/$name.yaml" "$out/$name" "$PEAGE_BIN" <<'PY'
import subprocess, sys, yaml
from pathlib import Path
path, work, peage = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
assert not any(k == "Secret" for k, _ in kinds), "the chart must not create Secrets"
deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}
assert set(deployments) == {"gateway", "aggregator", "billing"}, sorted(deployments)
for role, d in deployments.items():
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert c["args"] == [role], c["args"]
    for probe, route in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert c[probe]["httpGet"]["path"] == route, (role, probe)
    assert c["resources"]["requests"] and c["resources"]["limits"], role
    for e in c["env"]:
        assert "value" not in e or "://" not in e["value"] or e["name"] != "PEAGE_POSTGRES__URL", e
        if e["name"] in ("PEAGE_POSTGRES__URL", "PEAGE_CONTROL__ADMIN_TOKEN", "PEAGE_SECRETS__KEY", "PEAGE_GATEWAY__BILLING_TOKEN"):
            assert "secretKeyRef" in e["valueFrom"], e
    assert c["securityContext"]["readOnlyRootFilesystem"] is True, role
(config,) = [d for d in docs if d["kind"] == "ConfigMap"]
work.mkdir()
(work / "peage.toml").write_text(config["data"]["peage.toml"].replace("/etc/peage/", str(work) + "/"))
(work / "catalog.toml").write_text(open("deploy/dev/catalog.toml").read())
subprocess.run([peage, "config", "check", "--config", str(work / "peage.toml")], check=True, stdout=subprocess.DEVNULL)
PY
    log "helm chart ($name): $(grep -c '^kind:' "$out/$name.yaml") manifests valid against Kubernetes $KUBERNETES_VERSION"
}
render defaults
render options --release acme --set gateway.spool.persistentVolumeClaim=gateway-spool \
    --set gateway.replicas=4 --set gateway.service.type=LoadBalancer --set metricsPort=9100

# The check is real: a manifest with an unknown field fails it.
sed 's/^\(\s*\)imagePullPolicy: IfNotPresent/&\n\1bogusField: 1/' "$out/defaults.yaml" >"$out/broken.yaml"
if "$VALIDATE" --strict --quiet -k "$KUBERNETES_VERSION" "$out/broken.yaml" >/dev/null 2>&1; then
    log "kubernetes-validate accepted a manifest with an unknown field"; exit 1
fi
log "ok"
