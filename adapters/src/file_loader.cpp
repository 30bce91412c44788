#include "yilian/adapters/file_loader.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/fhir/xml.hpp"

namespace yilian::adapters {
namespace {

using fhir::value;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string describe(const fhir::issue_list& issues) {
  std::string out;
  for (const auto& i : issues.all()) {
    if (i.level != fhir::severity::error && i.level != fhir::severity::fatal) continue;
    if (!out.empty()) out += "; ";
    if (!i.location.empty()) out += i.location + ": ";
    out += i.diagnostics;
  }
  return out;
}

// The stored content without server-managed meta, to tell an unchanged reload from an update.
value without_server_meta(value v) {
  if (value* meta = v.find("meta")) {
    meta->erase("versionId");
    meta->erase("lastUpdated");
    if (meta->members().empty()) v.erase("meta");
  }
  return v;
}

class loader {
 public:
  loader(gateway::resource_store& store, const gateway::request_context& ctx) : store_(store), ctx_(ctx) {}

  void load_path(const std::filesystem::path& path) {
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        auto ext = entry.path().extension().string();
        if (entry.is_regular_file() && (ext == ".json" || ext == ".xml" || ext == ".ndjson")) files.push_back(entry.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) load_file(f);
    } else {
      load_file(path);
    }
  }

  load_report report;

 private:
  void load_file(const std::filesystem::path& file) {
    std::string text;
    try {
      text = read_file(file);
    } catch (const std::exception& e) {
      reject(file.string(), e.what());
      return;
    }
    if (file.extension() == ".ndjson") {
      std::istringstream lines(text);
      std::size_t n = 0;
      for (std::string line; std::getline(lines, line);) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        parse_and_store(file.string() + ":" + std::to_string(n), line, false);
      }
      return;
    }
    parse_and_store(file.string(), text, file.extension() == ".xml");
  }

  void parse_and_store(const std::string& where, const std::string& text, bool xml) {
    value resource;
    fhir::issue_list issues;
    bool ok = xml ? fhir::parse_xml(text, resource, issues) : fhir::parse_json(text, resource, issues);
    if (!ok) {
      reject(where, describe(issues));
      return;
    }
    const value* type = resource.find("resourceType");
    const value* bundle_type = resource.find("type");
    // Collections, transactions and batches are unpacked; documents and messages are stored whole.
    if (type && type->text() == "Bundle" && bundle_type &&
        (bundle_type->text() == "collection" || bundle_type->text() == "transaction" ||
         bundle_type->text() == "batch")) {
      if (const value* entries = resource.find("entry"); entries && entries->is_array()) {
        std::size_t index = 0;
        for (const auto& entry : entries->items()) {
          if (const value* r = entry.find("resource")) store_one(where + " entry[" + std::to_string(index) + "]", *r);
          ++index;
        }
      }
      return;
    }
    store_one(where, resource);
  }

  void store_one(const std::string& where, const value& resource) {
    fhir::issue_list issues;
    if (!fhir::validate_resource(resource, issues)) {
      reject(where, describe(issues));
      return;
    }
    std::string type = resource.find("resourceType")->text();
    try {
      const value* id = resource.find("id");
      if (id && id->is_string()) {
        if (auto current = store_.read(ctx_, type, id->text()); current && !current->deleted) {
          value stored;
          fhir::issue_list ignore;
          if (fhir::parse_json(current->json, stored, ignore) &&
              without_server_meta(std::move(stored)) == without_server_meta(resource)) {
            ++report.unchanged;
            return;
          }
        }
        store_.update(ctx_, type, id->text(), resource);
      } else {
        store_.create(ctx_, type, resource);
      }
      ++report.stored;
    } catch (const std::exception& e) {
      reject(where, e.what());
    }
  }

  void reject(const std::string& where, const std::string& why) {
    ++report.rejected;
    report.errors.push_back(where + ": " + why);
  }

  gateway::resource_store& store_;
  const gateway::request_context& ctx_;
};

}  // namespace

load_report load_fhir_files(gateway::resource_store& store, const gateway::request_context& ctx,
                            const std::filesystem::path& path) {
  loader l(store, ctx);
  if (!std::filesystem::exists(path)) {
    l.report.rejected = 1;
    l.report.errors.push_back(path.string() + ": no such file or folder");
    return l.report;
  }
  l.load_path(path);
  return l.report;
}

}  // namespace yilian::adapters
