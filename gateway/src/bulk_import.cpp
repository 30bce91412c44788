// NDJSON bulk load: each line validated like a REST write, the valid ones written in chunks, the
// invalid ones reported by line. POST [base]/$import takes the NDJSON as its body.
#include <set>
#include <utility>

#include "bulk_internal.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/gateway/bulk_data.hpp"
#include "yilian/profiles/alliance.hpp"

namespace yilian::gateway {

using fhir::issue_type;
using fhir::value;

ndjson_importer::ndjson_importer(resource_store& store, request_context context, bulk_import_options options,
                                 const fhir::definitions& defs)
    : store_(store), context_(std::move(context)), options_(options), defs_(defs) {
  if (options_.chunk_lines == 0) options_.chunk_lines = 1;
}

void ndjson_importer::add_line(std::string_view line, std::string where) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  if (line.empty()) return;
  ++report_.lines;

  auto reject = [&](const fhir::issue_list& issues, const std::string& subject) {
    ++report_.rejected;
    for (const auto& issue : issues.all()) {
      if (issue.level != fhir::severity::error && issue.level != fhir::severity::fatal) continue;
      std::string text = subject.empty() ? "" : subject + ": ";
      if (!issue.location.empty()) text += issue.location + ": ";
      report_.issues.add(issue.level, issue.type, text + issue.diagnostics, where);
    }
  };
  value resource;
  fhir::issue_list issues;
  if (!fhir::parse_json(line, resource, issues)) return reject(issues, "not valid JSON");
  const value* type = resource.is_object() ? resource.find("resourceType") : nullptr;
  const value* id = resource.is_object() ? resource.find("id") : nullptr;
  if (!type || !type->is_string() || !defs_.is_resource_type(type->text())) {
    issues.error(issue_type::invalid, "the line is not a FHIR resource (no known resourceType)");
    return reject(issues, {});
  }
  std::string subject = type->text() + "/" + (id && id->is_string() ? id->text() : "?");
  if (!id || !id->is_string() || id->text().empty()) {
    issues.error(issue_type::required, "a bulk load stores resources under their own id; this one has none");
    return reject(issues, subject);
  }
  if (!fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type->text()},
                               defs_))
    return reject(issues, subject);
  profiles::check_alliance_rules(resource, issues);
  if (issues.has_errors()) return reject(issues, subject);

  std::string type_name = type->text();
  std::string id_text = id->text();
  for (const auto& p : pending_)
    if (p.type == type_name && p.id == id_text) {
      write_chunk();  // the same resource twice: the first version is written before the second
      break;
    }
  pending_.push_back({std::move(where), std::move(type_name), std::move(id_text), std::move(resource)});
  if (pending_.size() >= options_.chunk_lines) write_chunk();
}

void ndjson_importer::finish() {
  write_chunk();
}

// One transaction for the chunk (put_all); when it fails, the lines are written one by one so
// that only the failing ones are rejected.
void ndjson_importer::write_chunk() {
  if (pending_.empty()) return;
  std::vector<batch_item> items;
  items.reserve(pending_.size());
  for (const auto& line : pending_) items.push_back({line.type, line.id, line.resource});
  try {
    for (const auto& written : store_.put_all(context_, std::move(items)))
      ++(written.version == 1 ? report_.created : report_.updated);
  } catch (const std::exception&) {
    for (auto& line : pending_) {
      try {
        auto result = store_.update(context_, line.type, line.id, std::move(line.resource));
        ++(result.created ? report_.created : report_.updated);
      } catch (const std::exception& e) {
        ++report_.rejected;
        report_.issues.error(issue_type::processing, line.type + "/" + line.id + ": " + e.what(), line.where);
      }
    }
  }
  pending_.clear();
}

namespace {

class import_operation {
 public:
  import_operation(resource_store& store, bulk_import_options options, const fhir::definitions& defs)
      : store_(store), options_(options), defs_(defs) {}

  operation_response operator()(const operation_call& call) const {
    std::string_view type = call.request.header("Content-Type");
    type = type.substr(0, type.find(';'));
    while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
    if (!iequals(type, "application/fhir+ndjson") && !iequals(type, "application/ndjson") &&
        !iequals(type, "application/x-ndjson"))
      throw fhir_failure(415, issue_type::not_supported,
                         "$import takes an NDJSON body (Content-Type: application/fhir+ndjson), one resource per line");
    const std::string& body = call.request.body;
    ndjson_importer importer(store_, call.context, options_, defs_);
    std::size_t line_no = 0;
    for (std::size_t start = 0; start < body.size();) {
      auto end = body.find('\n', start);
      if (end == std::string::npos) end = body.size();
      importer.add_line(std::string_view(body).substr(start, end - start), "line " + std::to_string(++line_no));
      start = end + 1;
    }
    importer.finish();
    const import_report& report = importer.report();
    if (report.lines == 0) throw fhir_failure(400, issue_type::required, "The NDJSON body has no resources");

    fhir::issue_list outcome;
    outcome.add(fhir::severity::information, issue_type::informational,
                std::to_string(report.lines) + " lines: " + std::to_string(report.created) + " created, " +
                    std::to_string(report.updated) + " updated, " + std::to_string(report.rejected) + " rejected");
    outcome.append(report.issues);
    // Each issue's place is a line of the body, not a FHIRPath expression: report it as location.
    value resource = fhir::to_operation_outcome(outcome);
    for (auto& issue : resource.find("issue")->items())
      for (auto& m : issue.members())
        if (m.name == "expression") m.name = "location";
    operation_response response;
    response.resource = std::move(resource);
    return response;
  }

 private:
  resource_store& store_;
  bulk_import_options options_;
  const fhir::definitions& defs_;
};

}  // namespace

void register_bulk_import(fhir_api& api, resource_store& store, bulk_import_options options,
                          const fhir::definitions& defs) {
  api.add_operation({"import", operation_level::system, {}, {"POST"}, "", import_operation(store, options, defs)});
}

}  // namespace yilian::gateway
