// FHIR XML <-> value tree, driven by the definitions (element order, arrays, primitive JSON
// types, xhtml narrative, primitive `_name` id/extension siblings). Xerces-C++ stays behind this
// header; parsing is hardened: no DTD, no external entities, no network, depth and size limits.
#pragma once

#include <string>
#include <string_view>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

// Parses a FHIR resource in XML into the JSON-shaped tree. Unknown elements and malformed XML
// become issues with their path; returns false on errors.
bool parse_xml(std::string_view text, value& out, issue_list& issues, const definitions& defs = definitions::r4());

struct xml_write_options {
  bool pretty = false;
};

// Serialises a resource tree (as produced by parse_json) to FHIR XML in definition order.
// Members the definitions do not know are reported as issues and skipped.
bool write_xml(const value& resource, std::string& out, issue_list& issues, const xml_write_options& options = {},
               const definitions& defs = definitions::r4());

}  // namespace yilian::fhir
