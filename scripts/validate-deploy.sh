#!/usr/bin/env bash
# Validates the Kubernetes manifests under deploy/ offline, so a typo fails CI:
#
#   bash scripts/validate-deploy.sh [DIR]      # DIR defaults to deploy/
#
# 1. Renders every kustomization under DIR the way `kubectl apply -k` would. Only the
#    `resources:` field is supported (files and directories); anything else fails, so
#    nothing goes unvalidated. A listed file that is missing fails, and so does a YAML
#    file that no kustomization lists (it would never be applied).
# 2. Validates every document against the Kubernetes OpenAPI schemas of a fixed set of
#    versions, strictly: an unknown field (`replicass: 2`), a wrong type, a missing
#    required field, an unknown kind or apiVersion, or a duplicate key fails.
# 3. Checks what the schemas cannot see, in each rendered install (a kustomization no other
#    one includes; base/ is checked inside each variant): every namespaced
#    object names a Namespace of the render; selectors (Deployment, Service,
#    PodDisruptionBudget) match the pods; Service target ports and probe ports exist on
#    the containers; bindings name a Role and ServiceAccounts of the render.
#
# The validator is kubernetes-validate from PyPI, which carries the schemas inside the
# package. It is installed once into a virtualenv under ~/.cache/kingress (with
# python3-venv from apt when the system Python lacks venv); after that the script runs
# offline.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: bump both together. The oldest Kubernetes the manifests support (1.30: the
# preStop sleep hook), and the newest this validator release knows.
KV_VERSION=1.37.0
KUBE_VERSIONS=(1.30 1.37)

dir="${1:-deploy}"
[ -d "$dir" ] || { echo "validate-deploy: no directory $dir" >&2; exit 2; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kingress"
venv="$cache/kubernetes-validate-$KV_VERSION"
py="$venv/bin/python"

installed() {
  "$py" -c "import sys, kubernetes_validate as kv; sys.exit(kv.__version__ != '$KV_VERSION')" 2>/dev/null
}

apt_install() {
  echo "validate-deploy: installing $* with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! installed; then
  echo "validate-deploy: installing kubernetes-validate $KV_VERSION into $venv" >&2
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  mkdir -p "$cache"
  # Built beside its final place and moved there once complete, so an interrupted
  # install never looks like a finished one.
  tmp="$(mktemp -d "$venv.tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  if ! python3 -m venv "$tmp" >/dev/null 2>&1; then
    # Debian and Ubuntu ship venv's ensurepip separately.
    apt_install python3-venv
    rm -rf "$tmp" && mkdir -p "$tmp"
    python3 -m venv "$tmp"
  fi
  "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  rm -rf "$venv"
  mv "$tmp" "$venv"
  trap - EXIT
  installed || { echo "validate-deploy: kubernetes-validate $KV_VERSION did not install" >&2; exit 1; }
fi

exec "$py" - "$dir" "${KUBE_VERSIONS[@]}" <<'PY'
import os
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import (
    InvalidSchemaError,
    SchemaNotFoundError,
    ValidationError,
    VersionNotSupportedError,
)

root, versions = sys.argv[1], sys.argv[2:]
# message -> the kustomizations it was found in (base/ is rendered by every variant too,
# so one problem is reported once).
errors = {}


def fail(msg, kustomization=None):
    found_in = errors.setdefault(msg, [])
    if kustomization and kustomization not in found_in:
        found_in.append(kustomization)


# --- YAML: safe, and a duplicate key is an error (the API server rejects it; PyYAML would
# silently keep the last value).
class Loader(yaml.SafeLoader):
    pass


def mapping_without_duplicates(loader, node):
    loader.flatten_mapping(node)
    out = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping_without_duplicates)


def load_all(path):
    try:
        with open(path) as f:
            return [d for d in yaml.load_all(f, Loader=Loader) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: {e}")
        return []


# --- 1. Render the kustomizations (the `resources:` subset of kustomize).
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources"}


def kustomization_file(d):
    for name in KUSTOMIZATION_FILES:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def yaml_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.endswith((".yaml", ".yml")) and f not in KUSTOMIZATION_FILES)


listed_anywhere = set()
# Kustomizations another one includes (base/): parts, not installs. Their objects are
# schema-checked, and their references only within each install that includes them
# (base/ has no Namespace of its own: each variant brings its own).
included = set()


def render(d, stack=()):
    """The documents of the kustomization in d, as (path, index, object)."""
    kfile = kustomization_file(d)
    if kfile is None:
        fail(f"{d}: listed as a resource but has no kustomization.yaml")
        return []
    docs = load_all(kfile)
    k = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else None
    if k is None:
        fail(f"{kfile}: expected one YAML mapping")
        return []
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        fail(f"{kfile}: expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
    for field in sorted(set(k) - SUPPORTED_FIELDS):
        fail(f"{kfile}: `{field}:` is not rendered by scripts/validate-deploy.sh "
             "(only resources:); teach it, so what is applied is what is validated")
    out, listed = [], set()
    for entry in k.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com/", "git@")):
            fail(f"{kfile}: resource {entry!r}: only local files and directories are supported")
            continue
        p = os.path.normpath(os.path.join(d, entry))
        if os.path.isdir(p):
            if p in stack:
                fail(f"{kfile}: resource {entry} includes itself")
                continue
            included.add(p)
            out += render(p, stack + (os.path.normpath(d),))
        elif os.path.isfile(p):
            listed.add(p)
            out += [(p, i, doc) for i, doc in enumerate(load_all(p))]
        else:
            fail(f"{kfile}: resource {entry} does not exist")
    listed_anywhere.update(listed)
    for f in yaml_files(d):
        if f not in listed:
            fail(f"{f}: not listed in {kfile} (it would never be applied)")
    return out


renders = {}
for d, subdirs, _ in os.walk(root):
    subdirs.sort()
    if kustomization_file(d):
        renders[os.path.normpath(d)] = render(d)
if not renders:
    fail(f"{root}: no kustomization.yaml")
for d, _, _ in os.walk(root):
    if not kustomization_file(d):
        for f in yaml_files(d):
            if f not in listed_anywhere:
                fail(f"{f}: in a directory without a kustomization.yaml, and no kustomization lists it")


# A file that does not parse or a missing resource would make the reference checks below
# report what is absent from the render: noise. They wait until the render is clean.
rendered_with_errors = bool(errors)


# --- 2. Schemas, each document once.
def describe(obj):
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if isinstance(meta, dict) and meta.get("namespace") else ""
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{obj.get('kind')} {ns}{name}"


seen = {}
for docs in renders.values():
    for path, i, obj in docs:
        seen[(path, i)] = obj
for (path, i), obj in sorted(seen.items()):
    where = f"{path} (document {i + 1})"
    if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
        fail(f"{where}: not a Kubernetes object (no apiVersion or kind)")
        continue
    ok = True
    for v in versions:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except ValidationError as e:
            field = ".".join(str(p) for p in e.path) or "(top level)"
            fail(f"{where}: {describe(obj)}: {field}: {e.message} (Kubernetes {v})")
            ok = False
        except SchemaNotFoundError as e:
            fail(f"{where}: {e.message}")
            ok = False
        except (InvalidSchemaError, VersionNotSupportedError) as e:
            sys.exit(f"validate-deploy: kubernetes-validate cannot check Kubernetes {v}: {e}")
    if ok:
        print(f"ok  {path}: {describe(obj)}")


# --- 3. References, per rendered kustomization.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass",
                  "PriorityClass", "StorageClass", "CustomResourceDefinition",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(d, docs):
    def fail_here(msg):
        fail(msg, d)

    objs = {}
    for path, _, obj in docs:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            continue  # reported above
        meta = obj["metadata"]
        key = (obj.get("kind"), meta.get("namespace"), meta.get("name"))
        if key in objs:
            fail_here(f"{describe(obj)} is defined twice ({objs[key][0]} and {path})")
        objs[key] = (path, obj)

    def exists(kind, ns, name):
        return (kind, ns, name) in objs

    namespaces = {name for (kind, _, name) in objs if kind == "Namespace"}
    pods = []  # (namespace, labels, containers, where)
    for (kind, ns, name), (path, obj) in objs.items():
        where = f"{path}: {kind} {name}"
        if kind not in CLUSTER_SCOPED:
            if not ns:
                fail_here(f"{where}: no metadata.namespace (it would land in kubectl's current namespace)")
            elif ns not in namespaces:
                fail_here(f"{where}: namespace {ns} is not a Namespace of this kustomization")
        spec = obj.get("spec") or {}
        if kind in WORKLOADS:
            template = spec.get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if not labels_match(selector, labels):
                fail_here(f"{where}: spec.selector.matchLabels does not match the pod template's labels")
            pod = template.get("spec") or {}
            sa = pod.get("serviceAccountName")
            if sa and not exists("ServiceAccount", ns, sa):
                fail_here(f"{where}: serviceAccountName {sa} is not a ServiceAccount in {ns}")
            containers = pod.get("containers") or []
            for c in containers:
                ports = {p.get("name") for p in c.get("ports") or []} | \
                        {p.get("containerPort") for p in c.get("ports") or []}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                    if port is not None and port not in ports:
                        fail_here(f"{where}: container {c.get('name')}: {probe} port {port} is not one of its ports")
            pods.append((ns, labels, containers, where))
    for (kind, ns, name), (path, obj) in objs.items():
        where = f"{path}: {kind} {name}"
        spec = obj.get("spec") or {}
        if kind in ("Service", "PodDisruptionBudget"):
            selector = spec.get("selector") or {}
            if kind == "PodDisruptionBudget":
                selector = selector.get("matchLabels") or {}
            if not selector:
                continue  # a Service without selector has hand-made endpoints
            matched = [p for p in pods if p[0] == ns and labels_match(selector, p[1])]
            if not matched:
                fail_here(f"{where}: its selector matches no pod template of this kustomization")
            if kind == "Service":
                for port in spec.get("ports") or []:
                    target = port.get("targetPort", port.get("port"))
                    for _, _, containers, pod_where in matched:
                        names = {p.get("name") for c in containers for p in c.get("ports") or []}
                        numbers = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
                        if target not in (names if isinstance(target, str) else numbers):
                            fail_here(f"{where}: port {port.get('name', port.get('port'))}: targetPort {target} "
                                      f"is not a container port of {pod_where}")
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            ref = obj.get("roleRef") or {}
            ref_ns = ns if ref.get("kind") == "Role" else None
            if not exists(ref.get("kind"), ref_ns, ref.get("name")):
                fail_here(f"{where}: roleRef {ref.get('kind')} {ref.get('name')} is not in this kustomization")
            for s in obj.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and not exists("ServiceAccount", s.get("namespace"), s.get("name")):
                    fail_here(f"{where}: subject ServiceAccount {s.get('namespace')}/{s.get('name')} "
                              "is not in this kustomization")


if rendered_with_errors:
    print("validate-deploy: reference checks skipped until the kustomizations render", file=sys.stderr)
    renders = {}
renders = {d: docs for d, docs in renders.items() if d not in included}
for d, docs in renders.items():
    before = sum(d in found_in for found_in in errors.values())
    check_references(d, docs)
    if sum(d in found_in for found_in in errors.values()) == before:
        print(f"ok  {d}/ renders {len(docs)} objects; references resolve")

if errors:
    print(f"\nvalidate-deploy: {len(errors)} problem(s):", file=sys.stderr)
    for e, found_in in errors.items():
        where = f" (rendering {', '.join(k + '/' for k in found_in)})" if found_in else ""
        print(f"  {e}{where}", file=sys.stderr)
    sys.exit(1)
print(f"validate-deploy: {len(seen)} objects in {len(renders)} kustomizations valid against "
      f"Kubernetes {', '.join(versions)} (strict, kubernetes-validate {kubernetes_validate.__version__})")
PY
