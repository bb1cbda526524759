#!/usr/bin/env python3
"""Turn a Kubernetes OpenAPI v2 document (api/openapi-spec/swagger.json of the
k8s.io/kubernetes module) into the per-kind JSON schemas kubeconform reads, offline.

Usage: kubeconform-schemas.py SWAGGER_JSON OUT_DIR

kubeconform looks a resource's schema up by a path template; charts/test-chart.sh passes
`-schema-location OUT_DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json`, where ResourceKind is
the lower-case kind and KindSuffix is `-<first label of the group>-<version>` (`-<version>`
for the core group). So this writes, for every definition that carries
x-kubernetes-group-version-kind:

    deployment-apps-v1.json, service-v1.json, clusterrole-rbac-v1.json,
    customresourcedefinition-apiextensions-v1.json, ...

Each file is a self-contained draft-04 schema (kubeconform's default draft): the kind's
definition at the top and every definition it references, transitively, under
`definitions`, with `$ref`s pointing there (the references are recursive, e.g.
JSONSchemaProps, so they cannot simply be inlined). Changes against the OpenAPI text:

  * strict: every object schema that lists `properties` and says nothing about
    `additionalProperties` gets `additionalProperties: false`, so that a misspelt or
    misplaced field is an error (kubeconform -strict only adds duplicate-key checks itself);
  * `apiVersion` and `kind` of the top-level object are pinned to the file's group/version
    and kind;
  * IntOrString (`format: int-or-string`) accepts a string or an integer and Quantity a
    string or a number, as the API server does;
  * descriptions are dropped (smaller files, faster to compile); so are the `x-kubernetes-*`
    annotations, which are no JSON-schema keywords.

Nothing else is loosened or tightened: no `null` is accepted where the OpenAPI has a type.
"""

import json
import os
import sys

REF_PREFIX = "#/definitions/"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def convert(schema):
    """A copy of one OpenAPI v2 schema as a draft-04 schema (see the module doc)."""
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        # In draft-04 the siblings of $ref are ignored anyway.
        return {"$ref": schema["$ref"]}
    if schema.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = {}
    for key, value in schema.items():
        if key == "description" or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: convert(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(s) for s in value]
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def refs_of(schema, found):
    """Add the names of the definitions that the converted `schema` references to `found`.
    Walks schema keywords only: JSONSchemaProps has a *property* named `$ref`."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if ref is not None:
        if not ref.startswith(REF_PREFIX):
            raise SystemExit(f"unexpected $ref {ref!r}")
        found.add(ref[len(REF_PREFIX):])
        return
    for prop in schema.get("properties", {}).values():
        refs_of(prop, found)
    for key in ("items", "additionalProperties", "not"):
        refs_of(schema.get(key), found)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            refs_of(sub, found)


def closure(name, definitions):
    """`name` and every definition reachable from it (in the converted `definitions`)."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        if current not in definitions:
            raise SystemExit(f"$ref to missing definition {current!r}")
        seen.add(current)
        refs = set()
        refs_of(definitions[current], refs)
        todo.extend(refs - seen)
    return seen


def file_name(gvk):
    group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
    return f"{kind.lower()}{suffix}.json"


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    swagger_path, out_dir = sys.argv[1], sys.argv[2]
    with open(swagger_path, encoding="utf-8") as f:
        definitions = json.load(f)["definitions"]

    converted = {name: convert(schema) for name, schema in definitions.items()}
    if INT_OR_STRING in converted:
        converted[INT_OR_STRING] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    if QUANTITY in converted:
        converted[QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}]}

    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for name in sorted(definitions):
        gvks = definitions[name].get("x-kubernetes-group-version-kind", [])
        for gvk in gvks:
            fname = file_name(gvk)
            if fname in written:
                # Several definitions for one file name (e.g. two groups sharing a first
                # label): prefer the one made for exactly this kind.
                if len(gvks) > 1:
                    continue
                if len(definitions[written[fname]].get("x-kubernetes-group-version-kind", [])) == 1:
                    raise SystemExit(f"{fname}: both {written[fname]} and {name}")
            group, version = gvk.get("group", ""), gvk["version"]
            root = dict(converted[name])
            props = dict(root.get("properties", {}))
            if "apiVersion" in props and "kind" in props:
                props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}" if group else version]}
                props["kind"] = {"type": "string", "enum": [gvk["kind"]]}
                root["properties"] = props
            doc = {"$schema": "http://json-schema.org/draft-04/schema#"}
            doc.update(root)
            doc["definitions"] = {d: converted[d] for d in sorted(closure(name, converted))}
            tmp = os.path.join(out_dir, f".{fname}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"), sort_keys=True)
            os.replace(tmp, os.path.join(out_dir, fname))
            written[fname] = name
    print(f"kubeconform-schemas: {len(written)} schemas in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
