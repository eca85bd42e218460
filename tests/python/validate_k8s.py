"""Validates MANIFEST_DIR/*.yaml (deploy/kubernetes, or deploy/kubernetes/replicated) against
the Kubernetes JSON schemas shipped with kubernetes-validate (PyPI), strictly (unknown fields
are errors), for the oldest and newest versions we support; checks a broken copy is refused;
checks what ties the pieces together (for replica groups: anti-affinity across nodes, a
PodDisruptionBudget that keeps a majority, readiness from gRPC health); and writes the
ConfigMap's files to OUT_DIR, with `replicas` (pods per StatefulSet, one line each), so the
caller can check them with paramdb's own parsers.

Usage: validate_k8s.py MANIFEST_DIR OUT_DIR"""

import copy
import glob
import os
import sys

import kubernetes_validate
import yaml

# pod-index labels (used for the shard number) arrived in Kubernetes 1.28.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def main():
    manifest_dir, out_dir = sys.argv[1], sys.argv[2]
    kinds = {}
    for path in sorted(glob.glob(os.path.join(manifest_dir, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                for v in VERSIONS:
                    kubernetes_validate.validate(doc, v, strict=True)
                kinds.setdefault(doc["kind"], []).append(doc)
                print(f"valid: {os.path.basename(path)} ({doc['kind']}) for {', '.join(VERSIONS)}")
    for kind in ["ConfigMap", "Service", "StatefulSet", "Job"]:
        assert kind in kinds, f"no {kind} in {manifest_dir}"

    # The validator does refuse bad manifests: a wrong type, and an unknown field.
    for mutate in [
        lambda d: d["spec"].__setitem__("replicas", "three"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePull", "x"),
    ]:
        bad = copy.deepcopy(kinds["StatefulSet"][0])
        mutate(bad)
        try:
            kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError:
            continue
        raise AssertionError("a broken StatefulSet passed validation")

    # What ties the pieces together.
    (svc,) = kinds["Service"]
    assert svc["spec"]["clusterIP"] == "None", "the Service must be headless"
    pdbs = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())): p
            for p in kinds.get("PodDisruptionBudget", [])}
    groups = len(kinds["StatefulSet"]) > 1
    for sts in kinds["StatefulSet"]:
        name = sts["metadata"]["name"]
        assert sts["spec"]["serviceName"] == svc["metadata"]["name"], name
        assert sts["spec"]["volumeClaimTemplates"], f"{name}: each server needs its own volume"
        pod = sts["spec"]["template"]
        c = pod["spec"]["containers"][0]
        assert "grpc" in c["readinessProbe"], f"{name}: readiness must come from gRPC health"
        selector = sts["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        if not groups:
            continue
        # A replica group: its pods on different nodes, a majority kept through disruptions,
        # the replica number from the pod's index.
        n = sts["spec"]["replicas"]
        anti = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert any(t["topologyKey"] == "kubernetes.io/hostname"
                   and t["labelSelector"]["matchLabels"] == selector for t in anti), \
            f"{name}: replicas must be kept on different nodes"
        pdb = pdbs.get(tuple(sorted(selector.items())))
        assert pdb is not None, f"{name}: no PodDisruptionBudget selects its pods"
        assert pdb["spec"]["minAvailable"] == n // 2 + 1, f"{name}: the budget must keep a majority"
        env = {e["name"]: e for e in c["env"]}
        assert env["PARAMDB_REPLICA_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.labels['apps.kubernetes.io/pod-index']", name
        assert "grpc" not in c["livenessProbe"], \
            f"{name}: a replica that is not caught up is not ready, but it is alive"
    os.makedirs(out_dir, exist_ok=True)
    for name, text in kinds["ConfigMap"][0]["data"].items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    with open(os.path.join(out_dir, "replicas"), "w") as f:
        f.write("\n".join(str(s["spec"]["replicas"]) for s in kinds["StatefulSet"]))
    print("kubernetes manifests: ok")


if __name__ == "__main__":
    main()
