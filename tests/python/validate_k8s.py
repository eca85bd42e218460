"""Validates deploy/kubernetes/*.yaml against the Kubernetes JSON schemas shipped with
kubernetes-validate (PyPI), strictly (unknown fields are errors), for the oldest and newest
versions we support; checks a broken copy is refused; and writes the ConfigMap's files to
OUT_DIR so the caller can check them with paramdb's own parsers.

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
                kinds[doc["kind"]] = doc
                print(f"valid: {os.path.basename(path)} ({doc['kind']}) for {', '.join(VERSIONS)}")
    for kind in ["ConfigMap", "Service", "StatefulSet", "Job"]:
        assert kind in kinds, f"no {kind} in {manifest_dir}"

    # The validator does refuse bad manifests: a wrong type, and an unknown field.
    for mutate in [
        lambda d: d["spec"].__setitem__("replicas", "three"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePull", "x"),
    ]:
        bad = copy.deepcopy(kinds["StatefulSet"])
        mutate(bad)
        try:
            kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError:
            continue
        raise AssertionError("a broken StatefulSet passed validation")

    # What ties the pieces together.
    sts, svc = kinds["StatefulSet"], kinds["Service"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None", "the Service must be headless"
    assert sts["spec"]["volumeClaimTemplates"], "each shard needs its own volume"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert "grpc" in c["readinessProbe"], "readiness must come from gRPC health"
    os.makedirs(out_dir, exist_ok=True)
    for name, text in kinds["ConfigMap"]["data"].items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    with open(os.path.join(out_dir, "replicas"), "w") as f:
        f.write(str(sts["spec"]["replicas"]))
    print("kubernetes manifests: ok")


if __name__ == "__main__":
    main()
