// FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html) applied to a value tree: the FHIR
// counterpart of JSON Patch (json_patch.hpp), with targets chosen by FHIRPath expressions and
// values typed by the definitions.
//
// `parameters` is a Parameters resource (parsed from JSON or XML) whose `parameter` entries are
// named `operation`, each with parts type (add | insert | delete | replace | move), path, name,
// value, index, source and destination. A `value` part carries value[x] (primitive or datatype) or
// nested `part`s that form an anonymous (backbone) element.
//
// Semantics (per the specification):
//  - add: path selects exactly one element; `name` is added to it (appended when the child is a
//    list, set when it is single: an error if that single child is already present).
//  - insert: path selects a list; the value is inserted at `index` (0..size).
//  - delete: path selects at most one element, which is removed (no match is not an error).
//  - replace: path selects exactly one element, whose value is replaced.
//  - move: path selects a list; the item at `source` moves to `destination`.
// Primitive values take the JSON kind of the target element (number, boolean, string); choice
// elements keep their typed name (valueQuantity); primitive `_name` companions stay aligned and
// empty objects or arrays left behind are removed.
#pragma once
#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

// Atomic: on failure `resource` is unchanged, an issue naming the operation (1-based) and its
// path is added (code `processing` when a path does not resolve as the operation requires,
// `invalid` for a malformed Parameters or FHIRPath) and the function returns false.
bool apply_fhirpath_patch(value& resource, const value& parameters, issue_list& issues,
                          const definitions& defs = definitions::r4());

}  // namespace yilian::fhir
