#!/usr/bin/env python3
"""Derive Yilian's compact FHIR R4 definitions from the official package.

Usage: scripts/gen-definitions.py <package-dir> <output.json>

<package-dir> is the unpacked npm package hl7.fhir.r4.examples@4.0.1 (scripts/fetch-fhir-package
puts it in ~/.cache/yilian/hl7.fhir.r4.examples-4.0.1). The output is compact, deterministic JSON
(fhir-model/definitions/r4-definitions.json) that fhir-model/src/definitions.cpp loads:

{
  "version": "4.0.1",
  "types": [                       # sorted by name; kinds: primitive-type, complex-type, resource
    {"name": "Patient", "kind": "resource", "abstract": 0|1, "base": "DomainResource",
     "json": "string"|"number"|"boolean",   # primitive types only
     "regex": "...",                        # primitive types only, when the spec gives one
     "elements": [                          # snapshot order; the first is the type's root
       {"p": path, "min": 0, "max": "1"|"*"|"n",
        "t": [type codes],                  # System.* codes mapped to the FHIR primitive
        "tp": [target type names],          # Reference/canonical targetProfile (last segment)
        "cr": "#Questionnaire.item",        # contentReference
        "bs": "required"|..., "vs": url,    # binding (value set without |version)
        "s": 1, "mod": 1, "attr": 1, "xhtml": 1}]}   # flags, present only when set
  ],
  "valueSets": {url: {system: [code, ...]}},  # required bindings that expand from the package
  "searchParams": [{"url", "code", "base", "type", "expression", "target", "modifier",
                    "comparator", "component": [{"definition", "expression"}]}],  # sorted by url
  "compartments": {"Patient": {"Observation": ["subject", "performer"], ...}, ...}
                                   # the official CompartmentDefinitions (Patient, Encounter,
                                   # RelatedPerson, Practitioner, Device): member resource type ->
                                   # search parameter codes; "{def}" and types without parameters
                                   # are left out; sorted by compartment and member
}
Empty fields are omitted. Standard library only.
"""

import glob
import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
SYSTEM_FALLBACK = {
    "String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
    "Date": "date", "DateTime": "dateTime", "Time": "time",
}
NUMBER_PRIMITIVES = {"integer", "positiveInt", "unsignedInt", "decimal"}
MAX_CODES = 2000
# Value sets that cannot be expanded from the package (external or grammar-based code systems).
UNEXPANDABLE = {
    "http://hl7.org/fhir/ValueSet/all-languages",
    "http://hl7.org/fhir/ValueSet/mimetypes",
    "http://hl7.org/fhir/ValueSet/ucum-units",
}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resources(pkg, resource_type, bundles, files=True):
    """Yields resources from <resource_type>-*.json files (if `files`) and from the given bundles."""
    paths = sorted(glob.glob(os.path.join(pkg, resource_type + "-*.json"))) if files else []
    for path in paths:
        try:
            yield load(path)
        except (OSError, ValueError):
            continue
    for name in bundles:
        path = os.path.join(pkg, name)
        if not os.path.exists(path):
            continue
        for entry in load(path).get("entry", []):
            res = entry.get("resource")
            if res and res.get("resourceType") == resource_type:
                yield res


def ext_value(exts, url):
    for e in exts or []:
        if e.get("url") == url:
            for k, v in e.items():
                if k.startswith("value"):
                    return v
    return None


def is_abstract(concept):
    for p in concept.get("property", []):
        if p.get("code") in ("notSelectable", "abstract") and p.get("valueBoolean") is True:
            return True
    return False


def strip_version(url):
    return url.split("|", 1)[0]


def type_code(t):
    code = t.get("code", "")
    if code.startswith(SYSTEM_PREFIX):
        mapped = ext_value(t.get("extension"), FHIR_TYPE_EXT)
        if mapped:
            return mapped
        return SYSTEM_FALLBACK.get(code[len(SYSTEM_PREFIX):], "string")
    return code


def compact_element(e):
    out = {"p": e["path"], "min": int(e.get("min", 0)), "max": str(e.get("max", "1"))}
    codes, targets = [], []
    for t in e.get("type", []):
        c = type_code(t)
        if c and c not in codes:
            codes.append(c)
        for tp in t.get("targetProfile", []):
            name = strip_version(tp).rstrip("/").rsplit("/", 1)[-1]
            if name not in targets:
                targets.append(name)
    if codes:
        out["t"] = codes
    if targets:
        out["tp"] = targets
    if e.get("contentReference"):
        out["cr"] = e["contentReference"]
    b = e.get("binding")
    if b and b.get("strength"):
        out["bs"] = b["strength"]
        if b.get("valueSet"):
            out["vs"] = strip_version(b["valueSet"])
    if e.get("isSummary"):
        out["s"] = 1
    if e.get("isModifier"):
        out["mod"] = 1
    if "xmlAttr" in e.get("representation", []):
        out["attr"] = 1
    if "xhtml" in codes:
        out["xhtml"] = 1
    return out


def collect_types(pkg):
    by_name = {}
    for sd in resources(pkg, "StructureDefinition", ["Bundle-types.json", "Bundle-resources.json"]):
        kind = sd.get("kind")
        if kind not in ("primitive-type", "complex-type", "resource"):
            continue
        # Specialisations, plus the roots (Element, Resource) that have no derivation at all.
        if sd.get("derivation", "specialization") != "specialization":
            continue
        if not sd.get("snapshot"):
            continue
        name = sd["type"]
        if sd.get("url") != "http://hl7.org/fhir/StructureDefinition/" + name:
            continue
        if name in by_name:
            continue
        elements = [e for e in sd["snapshot"]["element"] if not e.get("sliceName")]
        t = {"name": name, "kind": kind, "abstract": 1 if sd.get("abstract") else 0}
        if sd.get("baseDefinition"):
            t["base"] = sd["baseDefinition"].rsplit("/", 1)[-1]
        if kind == "primitive-type":
            t["json"] = ("boolean" if name == "boolean"
                         else "number" if name in NUMBER_PRIMITIVES else "string")
            for e in elements:
                if e["path"] == name + ".value":
                    for ty in e.get("type", []):
                        rx = ext_value(ty.get("extension"), REGEX_EXT)
                        if rx:
                            t["regex"] = rx
        t["elements"] = [compact_element(e) for e in elements]
        by_name[name] = t
    return [by_name[n] for n in sorted(by_name)]


class Terminology:
    def __init__(self, pkg):
        bundles = ["Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json",
                   "Bundle-externals.json"]
        self.code_systems = {}
        for cs in resources(pkg, "CodeSystem", bundles):
            url = cs.get("url")
            if url and url not in self.code_systems:
                self.code_systems[url] = cs
        self.value_sets = {}
        for vs in resources(pkg, "ValueSet", bundles):
            url = vs.get("url")
            if url and url not in self.value_sets:
                self.value_sets[url] = vs
        self.expansions = {}
        for vs in resources(pkg, "ValueSet", ["Bundle-valueset-expansions.json"]):
            url = vs.get("url")
            if url and vs.get("expansion") and url not in self.expansions:
                self.expansions[url] = vs["expansion"]

    def system_codes(self, system, selectable_only=True):
        """All codes of a complete CodeSystem; abstract (notSelectable) ones only if asked."""
        cs = self.code_systems.get(system)
        if not cs or cs.get("content") != "complete":
            return None
        out = []

        def walk(concepts):
            for c in concepts:
                if c.get("code") and not (selectable_only and is_abstract(c)):
                    out.append(c["code"])
                walk(c.get("concept", []))
        walk(cs.get("concept", []))
        return out

    def descendants(self, system, code, include_self):
        """Codes below `code` in a CodeSystem's nested hierarchy (is-a / descendent-of filters)."""
        cs = self.code_systems.get(system)
        if not cs or cs.get("content") != "complete":
            return None
        # Hierarchy from nesting plus the "parent"/"subsumedBy" properties some systems use.
        children = {}

        def walk(concepts, parent):
            for c in concepts:
                if parent is not None:
                    children.setdefault(parent, []).append(c["code"])
                for p in c.get("property", []):
                    if p.get("code") in ("parent", "subsumedBy") and p.get("valueCode"):
                        children.setdefault(p["valueCode"], []).append(c["code"])
                walk(c.get("concept", []), c["code"])
        walk(cs.get("concept", []), None)
        out, seen, stack = [], set(), [code]
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            if c != code or include_self:
                out.append(c)
            stack.extend(children.get(c, []))
        if code not in self.system_codes(system, selectable_only=False):
            return None
        abstract = set(self.system_codes(system, selectable_only=False)) - set(self.system_codes(system))
        return [c for c in out if c not in abstract]

    def include_codes(self, inc, depth):
        """Set of "system|code" for one compose.include/exclude, or None if unresolvable."""
        result = None
        system = inc.get("system")
        if system:
            if inc.get("concept"):
                result = {system + "|" + c["code"] for c in inc["concept"]}
            elif inc.get("filter"):
                for f in inc["filter"]:
                    op, prop, value = f.get("op"), f.get("property"), f.get("value")
                    if prop not in ("concept", "code") or op not in ("is-a", "descendent-of", "="):
                        return None
                    if op == "=":
                        codes = [value]
                    else:
                        codes = self.descendants(system, value, op == "is-a")
                    if codes is None:
                        return None
                    s = {system + "|" + c for c in codes}
                    result = s if result is None else result & s
            else:
                codes = self.system_codes(system)
                if codes is None:
                    return None
                result = {system + "|" + c for c in codes}
        for ref in inc.get("valueSet", []):
            s = self.expand(strip_version(ref), depth + 1)
            if s is None:
                return None
            result = s if result is None else result & s
        return result

    def expand(self, url, depth=0):
        if url in UNEXPANDABLE or depth > 8:
            return None
        vs = self.value_sets.get(url)
        codes = None
        if vs and vs.get("compose"):
            codes = set()
            for inc in vs["compose"].get("include", []):
                s = self.include_codes(inc, depth)
                if s is None:
                    codes = None
                    break
                codes |= s
            if codes is not None:
                for exc in vs["compose"].get("exclude", []):
                    s = self.include_codes(exc, depth)
                    if s is None:
                        codes = None
                        break
                    codes -= s
        if codes is None:
            codes = self.from_expansion(url)
        if codes is None or not codes or len(codes) > MAX_CODES:
            return None
        return codes

    def from_expansion(self, url):
        exp = self.expansions.get(url)
        if not exp:
            return None
        for p in exp.get("parameter", []):
            if p.get("name") == "limitedExpansion":
                return None
        out = set()

        def walk(items):
            for c in items:
                if c.get("system") and c.get("code") and not c.get("abstract"):
                    out.add(c["system"] + "|" + c["code"])
                walk(c.get("contains", []))
        walk(exp.get("contains", []))
        if "total" in exp and exp["total"] != len(out):
            return None
        return out


def collect_value_sets(pkg, types):
    urls = sorted({e["vs"] for t in types for e in t["elements"]
                   if e.get("bs") == "required" and e.get("vs")})
    term = Terminology(pkg)
    out, skipped = {}, []
    for url in urls:
        codes = term.expand(url)
        if codes is None:
            skipped.append(url)
            continue
        grouped = {}
        for sc in sorted(codes):
            system, code = sc.split("|", 1)
            grouped.setdefault(system, []).append(code)
        out[url] = grouped
    return out, skipped


def collect_search_params(pkg):
    # Bundle-searchParams.json is the specification's own list; the loose SearchParameter-*.json
    # files add examples and extension-based drafts (a second "_id", "part-agree"...), so they are
    # only a fallback when the bundle is missing.
    by_url = {}
    if os.path.exists(os.path.join(pkg, "Bundle-searchParams.json")):
        source = resources(pkg, "SearchParameter", ["Bundle-searchParams.json"], files=False)
    else:
        source = resources(pkg, "SearchParameter", [])
    for sp in source:
        url = sp.get("url")
        if not url or url in by_url:
            continue
        p = {"url": url, "code": sp.get("code", ""), "base": sp.get("base", []),
             "type": sp.get("type", "")}
        for key in ("expression",):
            if sp.get(key):
                p[key] = sp[key]
        for key in ("target", "modifier", "comparator"):
            if sp.get(key):
                p[key] = sp[key]
        if sp.get("component"):
            p["component"] = [{"definition": c.get("definition", ""),
                               "expression": c.get("expression", "")} for c in sp["component"]]
        by_url[url] = p
    return [by_url[u] for u in sorted(by_url)]


COMPARTMENT_URL = "http://hl7.org/fhir/CompartmentDefinition/"


def collect_compartments(pkg):
    # The official definitions only: CompartmentDefinition-example.json also claims code "Device".
    out = {}
    for cd in resources(pkg, "CompartmentDefinition", ["Bundle-resources.json"]):
        code = cd.get("code", "")
        if not code or cd.get("url") != COMPARTMENT_URL + code[0].lower() + code[1:] or code in out:
            continue
        members = {}
        for r in cd.get("resource", []):
            params = [p for p in r.get("param", []) if p != "{def}"]
            if r.get("code") and params:
                members[r["code"]] = params
        out[code] = {m: members[m] for m in sorted(members)}
    return {c: out[c] for c in sorted(out)}


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: gen-definitions.py <package-dir> <output.json>\n")
        return 2
    pkg, output = argv[1], argv[2]
    types = collect_types(pkg)
    value_sets, skipped = collect_value_sets(pkg, types)
    search_params = collect_search_params(pkg)
    compartments = collect_compartments(pkg)
    doc = {"version": "4.0.1", "types": types, "valueSets": value_sets,
           "searchParams": search_params, "compartments": compartments}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
    os.replace(tmp, output)
    sys.stderr.write("%s: %d types, %d value sets (%d required ones not expandable), "
                     "%d search parameters, %d compartments, %d bytes\n"
                     % (output, len(types), len(value_sets), len(skipped), len(search_params),
                        len(compartments), len(text.encode("utf-8"))))
    if os.environ.get("YILIAN_GEN_VERBOSE"):
        for url in skipped:
            sys.stderr.write("  not expanded: %s\n" % url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
