// Data problems are values, not exceptions: parsers, validators and mappers report them here with
// the location they concern, and one place turns the list into an OperationOutcome (or, for
// HL7 v2, an ERR segment).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

// OperationOutcome.issue.severity
enum class severity { fatal, error, warning, information };

// OperationOutcome.issue.code (http://hl7.org/fhir/issue-type), the subset Yilian reports.
enum class issue_type {
  invalid,
  structure,
  required,
  value,
  invariant,
  security,
  login,
  forbidden,
  processing,
  not_supported,
  duplicate,
  multiple_matches,
  not_found,
  deleted,
  too_long,
  code_invalid,
  extension,
  too_costly,
  business_rule,
  conflict,
  transient,
  lock_error,
  exception,
  timeout,
  incomplete,
  throttled,
  informational,
};

std::string_view to_string(severity s) noexcept;
std::string_view to_string(issue_type t) noexcept;

struct issue {
  severity level = severity::error;
  issue_type type = issue_type::invalid;
  std::string diagnostics;
  std::string location;  // FHIR element path ("Patient.name[1].given[0]"), HL7 "PID-5[2].1", or XPath
};

class issue_list {
 public:
  void add(severity level, issue_type type, std::string diagnostics, std::string location = {}) {
    issues_.push_back(issue{level, type, std::move(diagnostics), std::move(location)});
  }
  void error(issue_type type, std::string diagnostics, std::string location = {}) {
    add(severity::error, type, std::move(diagnostics), std::move(location));
  }
  void warning(issue_type type, std::string diagnostics, std::string location = {}) {
    add(severity::warning, type, std::move(diagnostics), std::move(location));
  }
  void append(const issue_list& other) { issues_.insert(issues_.end(), other.issues_.begin(), other.issues_.end()); }

  // True when any issue is an error or fatal.
  bool has_errors() const noexcept;
  bool empty() const noexcept { return issues_.empty(); }
  std::size_t size() const noexcept { return issues_.size(); }
  const std::vector<issue>& all() const noexcept { return issues_; }

 private:
  std::vector<issue> issues_;
};

// OperationOutcome resource built through the model (never a text template).
value to_operation_outcome(const issue_list& issues);
value to_operation_outcome(const issue& single);

}  // namespace yilian::fhir
