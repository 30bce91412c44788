// Private to $everything, $export and $import: parameter parsing shared by the operations and the
// Patient compartment as the SQL needs it.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/gateway/operation.hpp"

namespace yilian::gateway::detail {

// PostgreSQL text[] literal ({"a","b"}) for a bound parameter.
inline std::string text_array(const std::vector<std::string>& items) {
  std::string out = "{";
  for (const auto& item : items) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char ch : item) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out + "}";
}

inline std::vector<std::string> split_commas(std::string_view text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(',', start);
    if (end == std::string_view::npos) end = text.size();
    std::string item(text.substr(start, end - start));
    if (!item.empty()) out.push_back(std::move(item));
    start = end + 1;
  }
  return out;
}

// _type: every value of every occurrence, each a concrete resource type (else 400), sorted and
// without duplicates; empty when the parameter is absent.
inline std::vector<std::string> parse_type_param(const operation_call& call, const fhir::definitions& defs) {
  std::vector<std::string> types;
  for (const auto& [name, value] : call.params) {
    if (name != "_type") continue;
    for (auto& type : split_commas(value)) {
      const auto* def = defs.find_type(type);
      if (!defs.is_resource_type(type) || (def && def->is_abstract))
        throw fhir_failure(400, fhir::issue_type::invalid, "_type: '" + type + "' is not a resource type", "_type");
      types.push_back(std::move(type));
    }
  }
  std::sort(types.begin(), types.end());
  types.erase(std::unique(types.begin(), types.end()), types.end());
  return types;
}

// _since as a value PostgreSQL casts to timestamptz ("" when absent); a FHIR instant or dateTime.
inline std::string parse_since_param(const operation_call& call) {
  const std::string* since = call.param("_since");
  if (!since) return {};
  if (!fhir::is_valid_primitive("instant", *since) && !fhir::is_valid_primitive("dateTime", *since))
    throw fhir_failure(400, fhir::issue_type::invalid,
                       "_since: '" + *since + "' is not a FHIR instant (e.g. 2026-01-01T00:00:00Z)", "_since");
  if (since->size() == 4) return *since + "-01-01T00:00:00Z";
  if (since->size() == 7) return *since + "-01T00:00:00Z";
  return *since;
}

// The Patient compartment as parallel arrays of (member type, linking parameter) for unnest().
struct compartment_links {
  std::vector<std::string> types;
  std::vector<std::string> params;
};

inline compartment_links patient_compartment_links(const fhir::definitions& defs) {
  compartment_links out;
  for (const auto& type : defs.compartment_members("Patient")) {
    const auto* params = defs.compartment_params("Patient", type);
    if (!params) continue;
    for (const auto& p : *params) {
      out.types.push_back(type);
      out.params.push_back(p);
    }
  }
  return out;
}

// Types that hold patient data: Patient and the members of its compartment. Resources of other
// types (Practitioner, Organization, Medication, Location...) are shared.
inline std::vector<std::string> patient_data_types(const fhir::definitions& defs) {
  std::vector<std::string> out = defs.compartment_members("Patient");
  if (std::find(out.begin(), out.end(), "Patient") == out.end()) out.push_back("Patient");
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace yilian::gateway::detail
