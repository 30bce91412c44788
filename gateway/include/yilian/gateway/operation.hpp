// FHIR operations ($everything, $export, $status, ...) implemented outside fhir_api.cpp and
// registered with fhir_api::add_operation. An operation sees the parsed request and answers with a
// resource (rendered by fhir_api in the negotiated format) or with raw bytes (NDJSON files); a
// failure is thrown as fhir_failure and becomes an OperationOutcome with its status.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"
#include "yilian/gateway/http_message.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

// Thrown by operations (and anything below the REST layer that knows the HTTP status).
class fhir_failure : public std::runtime_error {
 public:
  fhir_failure(int status, fhir::issue_list issues)
      : std::runtime_error(issues.empty() ? "failure" : issues.all().front().diagnostics),
        status_(status),
        issues_(std::move(issues)) {}
  fhir_failure(int status, fhir::issue_type type, std::string diagnostics, std::string location = {})
      : std::runtime_error(diagnostics), status_(status) {
    issues_.error(type, std::move(diagnostics), std::move(location));
  }
  int status() const noexcept { return status_; }
  const fhir::issue_list& issues() const noexcept { return issues_; }

 private:
  int status_;
  fhir::issue_list issues_;
};

enum class operation_level { system, type, instance };

struct operation_call {
  const http_request& request;
  const request_context& context;
  std::string base_url;              // public base URL of the FHIR API ("http://host/fhir")
  std::string type;                  // "" at system level
  std::string id;                    // "" unless instance level
  std::vector<std::string> tail;     // path segments after the operation name ($export-status/job1 -> {"job1"})
  std::vector<std::pair<std::string, std::string>> params;  // decoded query (and form body) parameters

  // First value of a parameter, or nullptr.
  const std::string* param(std::string_view name) const {
    for (const auto& p : params)
      if (p.first == name) return &p.second;
    return nullptr;
  }
};

struct operation_response {
  int status = 200;
  std::optional<fhir::value> resource;  // rendered in the negotiated format when set
  std::string body;                     // otherwise sent as is, with `content_type`
  std::string content_type;
  std::vector<http_header> headers;
};

using operation_handler = std::function<operation_response(const operation_call&)>;

struct operation_definition {
  std::string name{};                  // without '$': "everything"
  operation_level level = operation_level::system;
  std::vector<std::string> types{};    // resource types it applies to (type/instance level); empty = all
  std::vector<std::string> methods = {"GET", "POST"};
  std::string definition_url{};        // canonical OperationDefinition, listed in the CapabilityStatement
  operation_handler handler{};
};

}  // namespace yilian::gateway
