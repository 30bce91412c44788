// FHIR JSON <-> value tree (RapidJSON stays behind this header).
#pragma once

#include <string>
#include <string_view>

#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

// Parses UTF-8 JSON text. Syntax errors, invalid UTF-8 and duplicate keys become `structure`
// issues (with the byte offset in the diagnostics) and the function returns false.
bool parse_json(std::string_view text, value& out, issue_list& issues);

struct json_write_options {
  bool pretty = false;
};

// Compact by default. Numbers are written as their literal text.
void write_json(const value& v, std::string& out, const json_write_options& options = {});
std::string to_json(const value& v, const json_write_options& options = {});

}  // namespace yilian::fhir
