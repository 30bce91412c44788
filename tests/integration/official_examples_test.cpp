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
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/fhir/xml.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;

namespace {

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
  auto known_invalid = test::known_failures("validation-known-invalid-examples.txt");

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
    std::string text = test::read_file(file);
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
    // JSON member order is not significant (the official examples do not follow definition
    // order, which XML must): compare with test::same_json.
    fhir::value expected = without_server_meta(original);
    fhir::value actual = without_server_meta(read_back);
    if (!id) actual.erase("id");  // the server assigned it (POST)
    if (!test::same_json(actual, expected)) {
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
    if (!test::same_json(without_server_meta(from_xml), without_server_meta(read_back)))
      failures.push_back(name + ": XML read back differs from JSON");
  }
  for (const auto& f : failures) std::cerr << "  " << f << "\n";
  std::cerr << "official examples: " << stored << " stored and read back, " << skipped_invalid
            << " known invalid skipped, " << failures.size() << " failures\n";
  CHECK(failures.empty());
  CHECK(stored + skipped_invalid + failures.size() == files.size());
}
