// Golden files for rejected requests: tests/data/rest-errors/<case>.request.json holds the request,
// <case>.response.json the expected status and OperationOutcome. A new case is a new file pair.
// YILIAN_UPDATE_GOLDEN=1 rewrites the expected files (review the diff before committing).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;


TEST_CASE("rejected requests answer golden OperationOutcomes") {
  gateway::resource_store store(test::fresh_database_url("rest_errors"), 1);
  store.migrate();
  gateway::fhir_api api(store, {});
  const std::filesystem::path dir = std::filesystem::path(YILIAN_SOURCE_DIR) / "tests/data/rest-errors";
  bool update = std::getenv("YILIAN_UPDATE_GOLDEN") != nullptr;
  std::size_t cases = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(".request.json")) continue;
    std::string base = name.substr(0, name.size() - std::string(".request.json").size());
    CAPTURE(base);
    fhir::value spec;
    fhir::issue_list issues;
    REQUIRE(fhir::parse_json(test::read_file(entry.path()), spec, issues));
    gateway::http_request req;
    req.method = spec.find("method")->text();
    req.target = spec.find("target")->text();
    req.body = spec.find("body")->text();
    for (const auto& h : spec.find("headers")->members()) req.headers.push_back({h.name, h.val.text()});
    auto res = api.handle(req);

    fhir::value actual = fhir::value::make_object();
    actual.set("status", fhir::value::make_number(std::to_string(res.status)));
    fhir::value body;
    fhir::issue_list body_issues;
    REQUIRE_MESSAGE(fhir::parse_json(res.body, body, body_issues), res.body);
    actual.set("body", body);
    auto expected_path = dir / (base + ".response.json");
    if (update) {
      std::ofstream(expected_path) << fhir::to_json(actual, {.pretty = true}) << "\n";
    } else {
      REQUIRE_MESSAGE(std::filesystem::exists(expected_path), "missing " << expected_path.string());
      fhir::value expected;
      REQUIRE(fhir::parse_json(test::read_file(expected_path), expected, issues));
      CHECK_MESSAGE(actual == expected, "got " << fhir::to_json(actual, {.pretty = true}));
    }
    CHECK(res.status >= 400);
    CHECK(body.find("resourceType")->text() == "OperationOutcome");
    ++cases;
  }
  CHECK(cases >= 20);
}
