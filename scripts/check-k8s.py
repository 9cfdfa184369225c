#!/usr/bin/env python3
"""Renders the kustomize base in deploy/k8s (and it with each component) the way `kustomize build`
does for the features it uses (resources, components, configMapGenerator), validates every
document against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and checks the
operational facts the base promises. Exit 1 with one line per problem.

Usage: scripts/check-k8s.py [deploy/k8s] [--k8s-version 1.30]
"""
import argparse
import copy
import os
import re
import sys

import yaml

KINDS = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}


def load_kustomization(d):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            with open(p) as f:
                return yaml.safe_load(f) or {}
    raise SystemExit(f"{d}: no kustomization.yaml")


def config_map(gen, base):
    data = {}
    for entry in gen.get("files", []):
        key, _, path = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
        with open(os.path.join(base, path)) as f:
            data[key] = f.read()
    for entry in gen.get("literals", []):
        k, _, v = entry.partition("=")
        data[k] = v
    opts = gen.get("options", {})
    if not opts.get("disableNameSuffixHash"):
        # A hash suffix would need the name rewritten in every reference; the base avoids it.
        raise SystemExit(f"{base}: configMapGenerator {gen['name']}: only disableNameSuffixHash: true is rendered here")
    meta = {"name": gen["name"]}
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def render(d, components=()):
    k = load_kustomization(d)
    docs = []
    for r in k.get("resources", []):
        p = os.path.join(d, r)
        if os.path.isdir(p):
            docs += render(p)
        else:
            with open(p) as f:
                docs += [x for x in yaml.safe_load_all(f) if x]
    for g in k.get("configMapGenerator", []):
        docs.append(config_map(g, d))
    for c in list(k.get("components", [])) + list(components):
        ck = load_kustomization(os.path.join(d, c))
        if ck.get("kind") != "Component":
            raise SystemExit(f"{c}: not a kustomize Component")
        docs += render(os.path.join(d, c))
    return docs


def duration_s(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(text))
    if not m:
        raise ValueError(f"cannot read the duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(bind):
    return int(str(bind).rsplit(":", 1)[1])


def policy(docs):
    """The facts the README and issue promise; one string per violation."""
    bad = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in sorted(KINDS - set(by_kind)):
        bad.append(f"no {kind} in the base")
    if bad:
        return bad
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    c = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    # The config ficus runs: the ConfigMap mounted (as a folder) where --config points.
    args = c.get("args", [])
    cfg_path = args[args.index("--config") + 1] if "--config" in args else None
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    cfg = None
    for m in c.get("volumeMounts", []):
        if "subPath" in m or "subPathExpr" in m:
            bad.append(f"volumeMount {m['name']}: subPath: the kubelet never updates it, so the config would never reload")
    for v in pod.get("volumes", []):
        if "configMap" not in v or v["name"] not in mounts:
            continue
        mount = mounts[v["name"]]
        cms = [x for x in by_kind["ConfigMap"] if x["metadata"]["name"] == v["configMap"]["name"]]
        if not cms:
            bad.append(f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the base")
            continue
        for key, text in cms[0].get("data", {}).items():
            if cfg_path == os.path.join(mount["mountPath"], key):
                cfg = yaml.safe_load(text)
    if cfg is None:
        bad.append(f"--config {cfg_path} is not a file of a mounted ConfigMap folder")
        return bad

    # Probes on the admin listener's real endpoints.
    admin_port = port_of(cfg.get("admin", {}).get("bind", "127.0.0.1:9901"))
    if not str(cfg.get("admin", {}).get("bind", "")).startswith(("0.0.0.0:", "[::]:")):
        bad.append("admin.bind must listen on all interfaces: the kubelet probes the pod IP")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            bad.append(f"{probe}: path {get.get('path')!r}, want {path}")
        port = ports.get(get.get("port"), get.get("port"))
        if port != admin_port:
            bad.append(f"{probe}: port {get.get('port')!r} is not the admin listener's {admin_port}")
    public = [port_of(l["bind"]) for l in cfg.get("listeners", [])]
    if ports.get("http") not in public:
        bad.append(f"containerPort http {ports.get('http')} is no listener's port {public}")

    # Shutdown: preStop pause, then SIGTERM and drain_timeout, all inside the grace period.
    pre = c.get("lifecycle", {}).get("preStop", {})
    pause = None
    if "sleep" in pre:
        pause = float(pre["sleep"].get("seconds", 0))
    elif pre.get("exec", {}).get("command", [])[:1] == ["sleep"]:
        pause = duration_s(pre["exec"]["command"][1] + ("" if pre["exec"]["command"][1][-1:].isalpha() else "s"))
    if not pause:
        bad.append("lifecycle.preStop: no pause (sleep) before SIGTERM")
        pause = 0
    drain = duration_s(cfg.get("shutdown", {}).get("drain_timeout", "30s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not grace > pause + drain:
        bad.append(f"terminationGracePeriodSeconds {grace} must exceed preStop {pause:g}s + drain_timeout {drain:g}s")

    # Restricted security context.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        bad.append("runAsNonRoot is not set")
    if csc.get("readOnlyRootFilesystem") is not True:
        bad.append("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        bad.append("allowPrivilegeEscalation is not false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        bad.append("capabilities.drop does not hold ALL")
    if csc.get("capabilities", {}).get("add"):
        bad.append("capabilities.add is not empty")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
    if seccomp != "RuntimeDefault":
        bad.append(f"seccompProfile {seccomp!r}, want RuntimeDefault")
    req = c.get("resources", {}).get("requests", {})
    for r in ("cpu", "memory"):
        if r not in req:
            bad.append(f"resources.requests.{r} is not set")

    # Everything else points at these pods and ports.
    def selects(sel):
        return sel and all(labels.get(k) == v for k, v in sel.items())

    for s in by_kind["Service"]:
        if not selects(s["spec"].get("selector")):
            bad.append(f"Service {s['metadata']['name']}: its selector misses the pods")
        for p in s["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                bad.append(f"Service {s['metadata']['name']}: targetPort {p['targetPort']} is no container port")
    for kind in ("PodDisruptionBudget",):
        for x in by_kind[kind]:
            if not selects(x["spec"]["selector"].get("matchLabels")):
                bad.append(f"{kind} {x['metadata']['name']}: its selector misses the pods")
    for x in by_kind["NetworkPolicy"]:
        if not selects(x["spec"]["podSelector"].get("matchLabels")):
            bad.append(f"NetworkPolicy {x['metadata']['name']}: its podSelector misses the pods")
        allowed = {p.get("port") for rule in x["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if "http" not in allowed and ports.get("http") not in allowed:
            bad.append(f"NetworkPolicy {x['metadata']['name']}: the public port is not let in")
    for x in by_kind["HorizontalPodAutoscaler"]:
        ref = x["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", dep["metadata"]["name"]):
            bad.append(f"HorizontalPodAutoscaler {x['metadata']['name']}: scales {ref}, not the Deployment")
        if x["spec"].get("minReplicas", 1) < 2:
            bad.append("HorizontalPodAutoscaler: minReplicas < 2 leaves the PodDisruptionBudget nothing to keep")
    if "replicas" in dep["spec"]:
        bad.append("Deployment: spec.replicas fights the HorizontalPodAutoscaler on every apply")

    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"].get("selector", {}).get("matchLabels", {})
        svcs = [s for s in by_kind["Service"] if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        names = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
        for e in sm["spec"].get("endpoints", []):
            if e.get("port") not in names:
                bad.append(f"ServiceMonitor {sm['metadata']['name']}: port {e.get('port')!r} is on no Service it selects")
            if e.get("path", "/metrics") != "/metrics":
                bad.append(f"ServiceMonitor: path {e.get('path')}, ficus serves /metrics")
    return bad


def validate(docs, version):
    import kubernetes_validate

    bad = []
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # A CRD: no schema in kubernetes-validate; policy() checks its shape and its port.
            for key in ("apiVersion", "kind", "metadata", "spec"):
                if key not in d:
                    bad.append(f"{what}: no {key}")
            print(f"  {what}: CRD, schema not checked (shape and port checked below)")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            print(f"  {what}: valid for Kubernetes {version}")
        except kubernetes_validate.ValidationError as e:
            bad.append(f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            bad.append(f"{what}: no schema: {e}")
    return bad


def self_test(docs):
    """The checks must be able to fail: each broken copy must be refused."""
    def dep(ds):
        return next(x for x in ds if x["kind"] == "Deployment")["spec"]["template"]["spec"]

    breaks = {
        "no preStop": lambda ds: dep(ds)["containers"][0].pop("lifecycle"),
        "short grace": lambda ds: dep(ds).__setitem__("terminationGracePeriodSeconds", 30),
        "subPath": lambda ds: dep(ds)["containers"][0]["volumeMounts"][0].__setitem__("subPath", "ficus.yaml"),
        "wrong probe": lambda ds: dep(ds)["containers"][0]["livenessProbe"]["httpGet"].__setitem__("path", "/health"),
        "writable root": lambda ds: dep(ds)["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        "caps kept": lambda ds: dep(ds)["containers"][0]["securityContext"]["capabilities"].__setitem__("drop", []),
        "no seccomp": lambda ds: [dep(ds)["containers"][0]["securityContext"].pop("seccompProfile"), dep(ds)["securityContext"].pop("seccompProfile")],
        "no requests": lambda ds: dep(ds)["containers"][0]["resources"].pop("requests"),
    }
    missed = []
    for name, brk in breaks.items():
        ds = copy.deepcopy(docs)
        brk(ds)
        if not policy(ds):
            missed.append(name)
    return [f"self-test: the policy check missed: {m}" for m in missed]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", nargs="?", default="deploy/k8s")
    ap.add_argument("--k8s-version", default="1.30")
    a = ap.parse_args()
    comps_dir = os.path.join(a.base, "components")
    comps = sorted(os.path.join("components", c) for c in os.listdir(comps_dir)) if os.path.isdir(comps_dir) else []
    bad = []
    for extra in [()] + [(c,) for c in comps]:
        label = a.base + "".join(f" + {c}" for c in extra)
        print(f"{label}:")
        docs = render(a.base, extra)
        bad += [f"{label}: {b}" for b in validate(docs, a.k8s_version) + policy(docs)]
        if not extra:
            bad += self_test(docs)
    for b in bad:
        print(f"FAIL {b}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print("kubernetes manifests: ok")


if __name__ == "__main__":
    main()
