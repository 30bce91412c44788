#include "yilian/fhir/issues.hpp"

namespace yilian::fhir {

std::string_view to_string(severity s) noexcept {
  switch (s) {
    case severity::fatal: return "fatal";
    case severity::error: return "error";
    case severity::warning: return "warning";
    case severity::information: return "information";
  }
  return "error";
}

std::string_view to_string(issue_type t) noexcept {
  switch (t) {
    case issue_type::invalid: return "invalid";
    case issue_type::structure: return "structure";
    case issue_type::required: return "required";
    case issue_type::value: return "value";
    case issue_type::invariant: return "invariant";
    case issue_type::security: return "security";
    case issue_type::login: return "login";
    case issue_type::forbidden: return "forbidden";
    case issue_type::processing: return "processing";
    case issue_type::not_supported: return "not-supported";
    case issue_type::duplicate: return "duplicate";
    case issue_type::multiple_matches: return "multiple-matches";
    case issue_type::not_found: return "not-found";
    case issue_type::deleted: return "deleted";
    case issue_type::too_long: return "too-long";
    case issue_type::code_invalid: return "code-invalid";
    case issue_type::extension: return "extension";
    case issue_type::too_costly: return "too-costly";
    case issue_type::business_rule: return "business-rule";
    case issue_type::conflict: return "conflict";
    case issue_type::transient: return "transient";
    case issue_type::lock_error: return "lock-error";
    case issue_type::exception: return "exception";
    case issue_type::timeout: return "timeout";
    case issue_type::incomplete: return "incomplete";
    case issue_type::throttled: return "throttled";
    case issue_type::informational: return "informational";
  }
  return "exception";
}

bool issue_list::has_errors() const noexcept {
  for (const auto& i : issues_)
    if (i.level == severity::error || i.level == severity::fatal) return true;
  return false;
}

namespace {
value issue_value(const issue& i) {
  value out = value::make_object();
  out.set("severity", value::make_string(std::string(to_string(i.level))));
  out.set("code", value::make_string(std::string(to_string(i.type))));
  if (!i.diagnostics.empty()) out.set("diagnostics", value::make_string(i.diagnostics));
  if (!i.location.empty()) {
    value paths = value::make_array();
    paths.push_back(value::make_string(i.location));
    out.set("expression", std::move(paths));
  }
  return out;
}
}  // namespace

value to_operation_outcome(const issue_list& issues) {
  value outcome = value::make_object();
  outcome.set("resourceType", value::make_string("OperationOutcome"));
  value list = value::make_array();
  for (const auto& i : issues.all()) list.push_back(issue_value(i));
  if (list.items().empty()) {
    list.push_back(issue_value(issue{severity::information, issue_type::informational, "All OK", {}}));
  }
  outcome.set("issue", std::move(list));
  return outcome;
}

value to_operation_outcome(const issue& single) {
  issue_list l;
  l.add(single.level, single.type, single.diagnostics, single.location);
  return to_operation_outcome(l);
}

}  // namespace yilian::fhir
