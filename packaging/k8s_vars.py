"""Do the variables k8s/ sets exist? (run by check-images.sh with the packaging venv)

  k8s_vars.py RENDERED_YAML HELP_DIR

RENDERED_YAML: every kustomization rendered; HELP_DIR/help-<service>: that image's
--help. For each service, the keys of its ConfigMaps and Secrets (espan-<service>,
with or without kustomize's hash suffix) and the env names of its container must
all appear in its --help: a misspelt variable would be ignored silently.
"""

import re
import sys

import yaml

SERVICES = ("probe", "linker", "exporter")


def main(rendered, help_dir):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    problems = []
    for svc in SERVICES:
        known = set(re.findall(r"[A-Z][A-Z0-9_]+", open(f"{help_dir}/help-{svc}").read()))
        names = set()
        for d in docs:
            name = d["metadata"]["name"]
            if d["kind"] in ("ConfigMap", "Secret") and re.fullmatch(f"espan-{svc}(-[a-z0-9]+)?", name):
                names |= set(d.get("data") or {}) | set(d.get("stringData") or {})
            pod = (d.get("spec") or {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []):
                if c["name"] == svc:
                    names |= {e["name"] for e in c.get("env", [])}
        if not names:
            problems.append(f"{svc}: k8s/ sets no variables for it")
        problems += [f"{svc}: {n}" for n in sorted(names - known)]
    if problems:
        print("; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
