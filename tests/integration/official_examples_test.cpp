// Every official example resource of hl7.fhir.r4.examples@4.0.1 that is valid is stored with PUT
// and read back identical (apart from meta.versionId/lastUpdated), in JSON and in XML.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "test_database.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/fhir/xml.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;

namespace {

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Files listed (first word of each non-comment line) in a known-failures file.
std::set<std::string> listed(const std::filesystem::path& file) {
  std::set<std::string> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    out.insert(line.substr(0, line.find_first_of(" \t")));
  }
  return out;
}

// JSON member order is not significant (and the official examples do not follow definition order,
// which XML must): compare with object members sorted by name, arrays in order.
fhir::value canonical(const fhir::value& v) {
  if (v.is_array()) {
    fhir::value out = fhir::value::make_array();
    for (const auto& i : v.items()) out.push_back(canonical(i));
    return out;
  }
  if (!v.is_object()) return v;
  fhir::value out = fhir::value::make_object();
  for (const auto& m : v.members()) out.members().push_back({m.name, canonical(m.val)});
  std::sort(out.members().begin(), out.members().end(),
            [](const fhir::member& a, const fhir::member& b) { return a.name < b.name; });
  return out;
}

fhir::value without_server_meta(fhir::value v) {
  if (fhir::value* meta = v.find("meta")) {
    meta->erase("versionId");
    meta->erase("lastUpdated");
    if (meta->members().empty()) v.erase("meta");
  }
  return v;
}

}  // namespace

TEST_CASE("official R4 examples: PUT, then read back identical in JSON and XML") {
  const std::filesystem::path package = YILIAN_FHIR_PACKAGE_DIR;
  REQUIRE_MESSAGE(std::filesystem::is_directory(package),
                  "the official package is missing: run scripts/fetch-fhir-package");
  auto known_invalid = listed(std::filesystem::path(YILIAN_SOURCE_DIR) / "tests/data/validation-known-invalid-examples.txt");

  gateway::resource_store store(test::fresh_database_url("official_examples"), 2);
  store.migrate();
  gateway::fhir_api_options options;
  options.base_url = "http://test.local/fhir";
  gateway::fhir_api api(store, options);

  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(package))
    if (e.path().extension() == ".json" && e.path().filename() != "package.json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() > 5000);

  std::size_t stored = 0, skipped_invalid = 0;
  std::vector<std::string> failures;
  for (const auto& file : files) {
    std::string name = file.filename().string();
    std::string text = slurp(file);
    fhir::value original;
    fhir::issue_list issues;
    if (!fhir::parse_json(text, original, issues)) {
      failures.push_back(name + ": does not parse");
      continue;
    }
    if (known_invalid.count(name)) {
      ++skipped_invalid;
      continue;
    }
    std::string type = original.find("resourceType")->text();
    const fhir::value* id = original.find("id");
    gateway::http_request put;
    put.method = id ? "PUT" : "POST";
    put.target = "/fhir/" + type + (id ? "/" + id->text() : "");
    put.headers = {{"Content-Type", "application/fhir+json"}};
    put.body = std::move(text);
    auto written = api.handle(put);
    if (written.status != 200 && written.status != 201) {
      failures.push_back(name + ": " + put.method + " answered " + std::to_string(written.status) + " " +
                         written.body.substr(0, 300));
      continue;
    }
    std::string location(written.header("Location"));
    std::string path = location.substr(std::string("http://test.local").size());
    path = path.substr(0, path.find("/_history"));
    ++stored;

    gateway::http_request get;
    get.method = "GET";
    get.target = path;
    auto json = api.handle(get);
    fhir::value read_back;
    if (json.status != 200 || !fhir::parse_json(json.body, read_back, issues)) {
      failures.push_back(name + ": JSON read answered " + std::to_string(json.status));
      continue;
    }
    fhir::value expected = canonical(without_server_meta(original));
    fhir::value actual = canonical(without_server_meta(read_back));
    if (!id) actual.erase("id");  // the server assigned it (POST)
    if (!(actual == expected)) {
      failures.push_back(name + ": JSON read back differs");
      continue;
    }

    get.target = path + "?_format=xml";
    auto xml = api.handle(get);
    fhir::value from_xml;
    fhir::issue_list xml_issues;
    if (xml.status != 200 || !fhir::parse_xml(xml.body, from_xml, xml_issues)) {
      failures.push_back(name + ": XML read answered " + std::to_string(xml.status) + " or did not parse");
      continue;
    }
    if (!(canonical(without_server_meta(from_xml)) == canonical(without_server_meta(read_back))))
      failures.push_back(name + ": XML read back differs from JSON");
  }
  for (const auto& f : failures) std::cerr << "  " << f << "\n";
  std::cerr << "official examples: " << stored << " stored and read back, " << skipped_invalid
            << " known invalid skipped, " << failures.size() << " failures\n";
  CHECK(failures.empty());
  CHECK(stored + skipped_invalid + failures.size() == files.size());
}
